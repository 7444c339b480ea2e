"""What the dashboard's pages share: view code only (no training, metric, SQL or planning logic; that is core's).

- `ui.guard`    the store guard: a `UserFacingError` (e.g. `core.errors.StoreError`) shown as one message, then
                the page stops (or goes on, for a section that may fail alone)
- `ui.model`    the one cached classifier loader: a run's model is loaded once for every page
- `ui.runs`     run labels for pickers
- `ui.figures`  the confusion-matrix heatmaps (one run, and the difference of two)
- `ui.palette`  the colours: the theme's purple-red, the heatmap scale, series colours
- `ui.images`   enlarging small cell images for display
- `ui.text`     Markdown escaping and plurals

Why a root package and not `pages/_ui.py`: Streamlit (1.67, `runtime/scriptrunner/script_runner.py:_mpa_v1`)
treats every `pages/*.py` except `__init__.py` and dot-files as a page of its automatic navigation while a
fresh server has not yet run `st.navigation` in app.py (the README's "Known limitations"): a helper module in
pages/ would appear in that sidebar (as "ui") and would run as a page script at `/ui`. Outside pages/ it never
can. Like the pages, it runs with the project folder on `sys.path`.

Nothing here loads TensorFlow at import time: `ui.model` imports core.inference inside the loader.
"""
