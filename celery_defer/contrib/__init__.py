"""Optional integrations (a pytest plugin); nothing here is imported by celery_defer itself."""
