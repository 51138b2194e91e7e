"""`colordiff demo`: a web app (Gradio) that colorizes uploaded photos with one model loaded at start.

- `core.py`: what the app does, without gradio: the settings (DemoConfig, RunSettings), reading uploads into
  one-line messages, colorizing an upload (with the colorize command's seeds, priors and output path), editing the
  priors of one image and running it again, and writing the downloads (PNGs, priors sidecars, a zip).
- `app.py`: the Gradio Blocks page around it (imported only when the app runs: gradio is an optional extra).

Nothing imports this package except `colordiff.demo_cli`.
"""
