"""Runs the main job on the embedded default: the example manifest -> clip partitions -> renders -> catalog.

Everything goes through Dagster against the instance in $DAGSTER_HOME, so the runs, partitions, checks and
metadata are there when you open the UI with `dagster dev` afterwards.
"""

from __future__ import annotations

import sys

import dagster as dg

from infinitetalk_pipeline.definitions import defs as load_defs


def main() -> int:
    defs = load_defs()
    instance = dg.DagsterInstance.get()
    manifest_job = defs.resolve_implicit_global_asset_job_def()

    def run(selection: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
        return manifest_job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(s) for s in selection],
            partition_key=partition,
            raise_on_error=False,
        )

    result = run(["clip_manifest"])
    if not result.success:
        print("clip_manifest failed", file=sys.stderr)
        return 1
    keys = instance.get_dynamic_partitions("clips")
    print(f"{len(keys)} clip partitions: {', '.join(keys)}")
    failed = []
    for key in keys:
        ok = run(["clip_timing", "dubbed_video"], partition=key).success
        print(f"  {key}: {'rendered' if ok else 'FAILED (see the run in the UI)'}")
        if not ok:
            failed.append(key)
    catalog = run(["video_catalog"])
    meta = catalog.asset_materializations_for_node("video_catalog")[0].metadata
    print(f"videos and catalog: {meta['catalog'].value} ({meta['rows'].value} rows)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
