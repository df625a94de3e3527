"""The REST API and the offline map page."""
