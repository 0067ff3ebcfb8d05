"""permerge's Streamlit app: `streamlit run app.py` (or `bash run.sh app`).

The entry script is only the frame around every page (page config, session state, shared
sidebar, navigation, status line), all in `permerge_app.ui.run_app`. Pages (pages/*.py) are
thin scripts over permerge_core; shared UI helpers live in permerge_app/ui.py, figures in
permerge_app/charts.py, and display computations in permerge_app/views.py.
"""

from permerge_app import ui

ui.run_app()
