// Headless Chromium drives the Prefect UI: open a deployment, start a custom run with one
// parameter changed, wait for the UI's create_flow_run call, then watch the run page until the
// run is Completed. Prints one JSON line {flow_run_id, parameters} for the test to check.
//
//   node custom_run.mjs UI_URL DEPLOYMENT_ID PARAM_LABEL NEW_VALUE OUT_DIR [FINAL_TIMEOUT_MS]
//
// FINAL_TIMEOUT_MS (default 150000) bounds the wait for the run's final state: a redeploy on
// the real cluster under load takes longer than one on the imitation did.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [uiUrl, deploymentId, paramLabel, newValue, outDir, finalTimeoutMs] = process.argv.slice(2);
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
// The UI reports usage to amplitude; this machine has no route there and must not wait on it.
await page.route(/amplitude/, (route) => route.abort());

async function dump(name) {
  await page.screenshot({ path: join(outDir, `${name}.png`), fullPage: true });
  writeFileSync(join(outDir, `${name}.html`), await page.content());
}

try {
  // The V2 UI (served under /v2).
  await page.goto(`${uiUrl}/v2/deployments/deployment/${deploymentId}`, {
    waitUntil: "networkidle",
  });
  await dump("deployment");
  await page.getByRole("button", { name: "Run", exact: true }).first().click();
  await page.getByRole("menuitem", { name: /custom run/i }).first().click();
  await page.waitForURL(/\/run/);
  await page.waitForLoadState("networkidle");
  await dump("custom-run-form");

  const field = page.getByLabel(paramLabel, { exact: false }).first();
  await field.fill(newValue);

  const created = page.waitForResponse(
    (response) =>
      response.url().includes("/create_flow_run") && response.request().method() === "POST",
  );
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  const response = await created;
  const body = await response.json();
  const sent = JSON.parse(response.request().postData() || "{}");

  await page.goto(`${uiUrl}/v2/runs/flow-run/${body.id}`, { waitUntil: "networkidle" });
  // The run page updates itself; wait for a terminal state badge, then require Completed.
  const badge = page.getByText(/^(Completed|Failed|Crashed|Cancelled)$/).first();
  await badge.waitFor({ timeout: Number(finalTimeoutMs ?? 150_000) });
  const state = (await badge.textContent()).trim();
  await dump(state === "Completed" ? "flow-run-completed" : "flow-run-ended");
  if (state !== "Completed") throw new Error(`flow run ${body.id} ended ${state}`);
  console.log(JSON.stringify({ flow_run_id: body.id, parameters: sent.parameters ?? null }));
} catch (error) {
  await dump("failure");
  console.error(String(error && error.stack ? error.stack : error));
  process.exitCode = 1;
} finally {
  await browser.close();
}
