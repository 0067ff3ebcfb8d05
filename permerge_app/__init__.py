"""The Streamlit app's shared pieces: `ui` (sidebar, session state, cached pipelines, progress,
errors), `charts` (plotly figures) and `views` (what a page shows, computed without Streamlit).
Computation lives in permerge_core, which never imports this package; pages stay thin."""
