"""Names the definitions share: asset keys, and the metadata key a failed render run lists its clips under."""

import dagster as dg

TIMING = dg.AssetKey("clip_timing")
VIDEO = dg.AssetKey("dubbed_video")
# On the dg.Failure of a render step: clip id -> ClipFailure.to_dict(); read by render_failure_sensor.
FAILED_CLIPS = "failed_clips"
