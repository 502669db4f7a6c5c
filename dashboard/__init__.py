"""CareWatch clinician workspace (Streamlit).

It talks to the ingest service's HTTP API only, never to the database, so that every view is
authorised and audited:

- :mod:`dashboard.api_client` is the HTTP client (no Streamlit): one method per API call and
  :class:`~dashboard.api_client.ApiError` messages that say what to do.
- :mod:`dashboard.charts` builds the Altair charts from pandas frames (no Streamlit).
- :mod:`dashboard.triage_page` and :mod:`dashboard.patient_page` render the two pages.
- ``dashboard/app.py`` is the ``streamlit run`` entry: page set-up, sidebar, navigation.
"""
