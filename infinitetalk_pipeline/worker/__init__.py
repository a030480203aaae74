"""The GPU worker: what it is made of (`worker.lock.toml`), how it is installed, verified and given its models."""
