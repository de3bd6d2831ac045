"""GitOps for plain servers: reconcile hosts over SSH to what Git says, with Ansible."""

__version__ = "0.1.0"
