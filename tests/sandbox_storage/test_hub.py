"""The real modelscope client (snapshot_download, HubApi) against the sandbox hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
from modelscope import snapshot_download
from modelscope.hub.api import HubApi
from modelscope_hub.errors import FileDownloadError, NotExistError

from sandbox.hub import HubServer


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    p = tmp_path / "weights.bin"
    p.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    return p


def _publish(hub: HubServer, payload: Path) -> None:
    hub.add_revision(
        "acme/tiny",
        "v1",
        {"config.json": b'{"model_type": "qwen3"}', "sub/weights.bin": payload},
    )


def test_snapshot_download_and_listing(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    out = Path(snapshot_download("acme/tiny", revision="v1", cache_dir=tmp_path / "c",
                                 endpoint=hub.base_url))  # fmt: skip
    assert _sha(out / "sub/weights.bin") == _sha(payload)
    assert (out / "config.json").read_bytes() == b'{"model_type": "qwen3"}'

    api = HubApi(endpoint=hub.base_url)
    files = {f["Path"]: f for f in api.get_model_files("acme/tiny", revision="v1")}
    assert files["sub/weights.bin"]["Size"] == payload.stat().st_size
    assert api.get_model("acme/tiny")["Name"] == "tiny"
    assert api.get_model_branches_and_tags("acme/tiny") == (["master"], ["v1"])
    hub.wait_idle()
    paths = [r.path for r in hub.request_log]
    assert "/api/v1/models/acme/tiny/repo/files" in paths
    assert hub.bytes_served >= payload.stat().st_size


def test_listing_shape_and_moving_master(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    hub.add_revision("acme/tiny", "v2", {"config.json": b'{"v": 2}'})
    url = f"{hub.base_url}/api/v1/models/acme/tiny/repo/files"
    body = requests.get(url, params={"Revision": "master", "Recursive": "True"}, timeout=5).json()
    assert body["Code"] == 200
    entries = {f["Path"]: f for f in body["Data"]["Files"]}
    assert entries["sub"]["Type"] == "tree"
    blob = entries["sub/weights.bin"]
    assert (blob["Type"], blob["Sha256"], blob["Size"], blob["Revision"]) == (
        "blob", _sha(payload), payload.stat().st_size, "v1")  # fmt: skip

    hub.move_branch("acme/tiny", "master", "v2")
    body = requests.get(url, params={"Revision": "master", "Recursive": "True"}, timeout=5).json()
    assert [f["Path"] for f in body["Data"]["Files"]] == ["config.json"]
    assert body["Data"]["Files"][0]["Revision"] == "v2"
    # The older revision stays reachable by its own name.
    out = Path(snapshot_download("acme/tiny", revision="v1", cache_dir=tmp_path / "c",
                                 endpoint=hub.base_url))  # fmt: skip
    assert _sha(out / "sub/weights.bin") == _sha(payload)


def test_range_semantics(hub: HubServer, payload: Path) -> None:
    _publish(hub, payload)
    size = payload.stat().st_size
    data = payload.read_bytes()
    url = f"{hub.base_url}/api/v1/models/acme/tiny/repo"
    params = {"Revision": "v1", "FilePath": "sub/weights.bin"}
    r = requests.get(url, params=params, timeout=5)
    assert (r.status_code, len(r.content)) == (200, size)
    r = requests.get(url, params=params, headers={"Range": "bytes=100-"}, timeout=5)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 100-{size - 1}/{size}"
    assert r.content == data[100:]
    r = requests.get(url, params=params, headers={"Range": "bytes=10-19"}, timeout=5)
    assert (r.status_code, r.headers["Content-Range"], r.content) == (
        206, f"bytes 10-19/{size}", data[10:20])  # fmt: skip
    r = requests.get(url, params=params, headers={"Range": "bytes=-5"}, timeout=5)
    assert r.content == data[-5:]
    r = requests.get(url, params=params, headers={"Range": f"bytes={size}-"}, timeout=5)
    assert (r.status_code, r.headers["Content-Range"]) == (416, f"bytes */{size}")


def test_unknown_model_and_file(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    api = HubApi(endpoint=hub.base_url)
    with pytest.raises(NotExistError, match="does not exist"):
        api.get_model("acme/missing")
    with pytest.raises(requests.HTTPError, match="404"):
        snapshot_download("acme/missing", cache_dir=tmp_path / "c", endpoint=hub.base_url)
    r = requests.get(f"{hub.base_url}/api/v1/models/acme/tiny/repo",
                     params={"Revision": "v1", "FilePath": "nope.bin"}, timeout=5)  # fmt: skip
    assert r.status_code == 404 and r.json()["Success"] is False


def test_drop_after_bytes_resumes_with_range(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    hub.faults.drop_after_bytes("sub/weights.bin", 1_000_000)
    out = Path(snapshot_download("acme/tiny", revision="v1", cache_dir=tmp_path / "c",
                                 endpoint=hub.base_url))  # fmt: skip
    assert _sha(out / "sub/weights.bin") == _sha(payload)
    hub.wait_idle()
    gets = [r for r in hub.request_log if r.query.get("FilePath") == "sub/weights.bin"]
    assert [(g.status, g.bytes_sent, g.range) for g in gets] == [
        (200, 1_000_000, None),
        (206, payload.stat().st_size - 1_000_000, "bytes=1000000-"),
    ]


def test_wrong_sha256_fails_download(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    hub.faults.wrong_sha256("sub/weights.bin")
    with pytest.raises(FileDownloadError) as info:
        snapshot_download("acme/tiny", revision="v1", cache_dir=tmp_path / "c",
                          endpoint=hub.base_url)  # fmt: skip
    assert "sub/weights.bin" in info.value.failed_files
    assert "Hash mismatch" in str(info.value.failed_files["sub/weights.bin"])


def test_5xx_is_retried_then_served(hub: HubServer, payload: Path, tmp_path: Path) -> None:
    _publish(hub, payload)
    hub.faults.server_error("FilePath=config.json", times=2, status=502)
    out = Path(snapshot_download("acme/tiny", revision="v1", cache_dir=tmp_path / "c",
                                 endpoint=hub.base_url))  # fmt: skip
    assert (out / "config.json").exists()
    hub.wait_idle()
    statuses = [r.status for r in hub.request_log if r.query.get("FilePath") == "config.json"]
    assert statuses == [502, 502, 200]


def test_5xx_on_listing_surfaces(hub: HubServer, payload: Path) -> None:
    _publish(hub, payload)
    hub.faults.server_error("/repo/files", times=1, status=500)
    r = requests.get(f"{hub.base_url}/api/v1/models/acme/tiny/repo/files",
                     params={"Revision": "v1"}, timeout=5)  # fmt: skip
    assert r.status_code == 500 and r.json()["Success"] is False
    r = requests.get(f"{hub.base_url}/api/v1/models/acme/tiny/repo/files",
                     params={"Revision": "v1"}, timeout=5)  # fmt: skip
    assert r.status_code == 200


def test_slow_first_byte(hub: HubServer, payload: Path) -> None:
    _publish(hub, payload)
    hub.faults.slow_first_byte(3.0, path_contains="FilePath=config.json", times=1)
    url = f"{hub.base_url}/api/v1/models/acme/tiny/repo"
    params = {"Revision": "v1", "FilePath": "config.json"}
    with pytest.raises(requests.ReadTimeout):
        requests.get(url, params=params, timeout=(2, 0.2))
    # The rule was spent by the first request: a second one delayed like it (3 s) could not
    # answer inside a 2 s read timeout.
    assert requests.get(url, params=params, timeout=(2, 2.0)).status_code == 200
