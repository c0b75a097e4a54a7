"""The refusals a user can fix (bad config, dataset, model, output name, busy host, a run gone NaN or
out of memory, a dataset preparation setting), as opposed to bugs. Front ends show these as plain
messages, without a traceback."""
from __future__ import annotations


def user_error_types() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data.folders import DatasetError
    from .export.atomic import OutputExistsError
    from .hosts.base import HostError
    from .model.errors import ModelError
    from .prepare.images import PrepareError
    from .train.events import NonFiniteLossError
    from .train.memory import OutOfMemoryTrainingError

    return (ConfigError, DatasetError, HostError, ModelError, OutputExistsError, FileNotFoundError,
            NonFiniteLossError, OutOfMemoryTrainingError, PrepareError)
