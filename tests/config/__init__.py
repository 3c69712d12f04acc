"""Tests of the policy-file layer (`autoscaler.config`) and the settings."""
