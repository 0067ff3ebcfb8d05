"""The Streamlit app's shared pieces: `ui` (sidebar, session state, cached pipelines, progress,
errors) and `charts` (plotly figures). Computation lives in permerge_core; pages stay thin."""
