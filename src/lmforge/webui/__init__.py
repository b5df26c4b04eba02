"""`lmforge webui`: the board. Train, inspect data, chat, evaluate, export and synth in the
browser, over the same config schema as the CLI; every job is an `lmforge` subprocess.

Modules: form.py (schema -> form), jobs.py + wrap.py (the job slot), runs.py (progress, loss
and finished runs from output folders), checks.py (typed paths), worker.py (chat models in an
`lmforge api` process), serve.py (address and password rules), i18n.py (+ i18n_*.yaml),
app.py (the Gradio page). Importing this package imports nothing heavy.
"""
