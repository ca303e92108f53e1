"""Kubernetes: the CRD generated from the policy model and the status it renders."""
