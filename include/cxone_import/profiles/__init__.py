"""One module per API profile of the CXone connection (``api_profile``), each holding its import step."""
