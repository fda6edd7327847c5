"""What every run stands on, whatever its method: checkpoints, the workdir (lock, config checks,
run status), sharding, optimizers and schedules, metrics, RNG streams, errors and exit statuses,
preemption, PNG grids, and the filter for libraries' noise on stderr."""
