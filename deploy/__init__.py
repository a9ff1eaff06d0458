"""Deployment templates shipped with the package (`oscar_cluster.deploy`): deploy/k8s/base holds the
KubeRay kustomize bases that `oscar-plan --emit rayservice|rayjob` renders."""
