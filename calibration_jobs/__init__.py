"""Distributed calibration as Ray jobs (installed as `oscar_cluster.calibration_jobs`). Not built yet:
the in-process path is `oscar_cluster.calibrate`."""
