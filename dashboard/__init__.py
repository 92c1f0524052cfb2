"""The Streamlit dashboard: pure loaders (``data``), chart builders (``charts``), pages (``views``)."""
