"""daemons package."""
