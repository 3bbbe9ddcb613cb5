"""What the Hydra entry points share, by concern (this module only gathers their names; importing it changes
nothing): :mod:`~dae_gen.cli.launch` (running an app, config path, command line, output folders),
:mod:`~dae_gen.cli.logs` (console and ``train.log``), :mod:`~dae_gen.cli.errors` (one-line user errors),
:mod:`~dae_gen.cli.checks` (config checks, threads) and :mod:`~dae_gen.cli.sampling` (the command line's sampler).
"""

from __future__ import annotations

from dae_gen.cli.checks import building, check_arguments, check_positive, check_threads, check_values, set_threads
from dae_gen.cli.errors import is_user_error, one_line
from dae_gen.cli.launch import (
    CONFIG_PATH,
    command_line,
    explicit_output_dir,
    new_output_dir,
    open_sampler_overrides,
    process_start,
    register_resolvers,
    reports_user_errors,
    run_cli,
    run_folder,
)
from dae_gen.cli.logs import LOG_FILE, LOG_FORMAT, collected_log, run_log, setup_console_logging
from dae_gen.cli.sampling import cli_sampler, sampler_label

__all__ = ["CONFIG_PATH", "LOG_FILE", "LOG_FORMAT", "building", "check_arguments", "check_positive", "check_threads",
           "check_values", "cli_sampler", "collected_log", "command_line", "explicit_output_dir", "is_user_error",
           "new_output_dir", "one_line", "open_sampler_overrides", "process_start", "register_resolvers",
           "reports_user_errors", "run_cli", "run_folder", "run_log", "sampler_label", "set_threads",
           "setup_console_logging"]
