"""Releases as the cluster sees them: which one serves, which objects and pods belong to one,
and the writes that move traffic (switch the stable Service) or remove a release.

The cluster is the only source of truth: the stable Service's selector names the serving
release, its annotations name the one before it. Nothing here keeps local state, so `status`
and `rollback` from another machine see exactly what the deploy flow left.

By concern:
- `cluster`: the process's API client for the tasks (`cluster_api`);
- `state`: the serving release, read from the stable Service;
- `inventory`: the objects and pods of a release or of a whole service;
- `writing`: what the stages apply besides the plan's objects, and how (dry-run first);
- `services`: the stable Service switched (promote, rollback, restore) and RBG role Services;
- `removal`: a release or a whole service removed, waiting for its pods;
- `status`: what `llm-rollout status` shows;
- `bake`: the promoted release watched while the previous one can still take traffic back.
"""
