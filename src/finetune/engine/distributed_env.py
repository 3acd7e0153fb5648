"""Is this process one of several that torchrun started? Read from the environment only,
so that the entrypoint can ask without importing torch (`--help` and `--cfg` stay fast)."""

import os


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
