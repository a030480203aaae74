"""One partition per clip; keys are the manifests' (normalised) clip ids."""

import dagster as dg

clips = dg.DynamicPartitionsDefinition(name="clips")
