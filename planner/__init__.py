"""Capacity and cost planner (`oscar-plan`, installed as `oscar_cluster.planner`). Not built yet."""
