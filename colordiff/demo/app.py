"""The Gradio page of `colordiff demo` around a Colorizer (gradio is imported here, only when the app runs).

Layout: uploads, the Colorize button and the settings on the left; the before/after slider, the gallery of results
(captioned with their seeds), the player of a colorized video and the downloads on the right; below, the priors
panel of one image (caption, category, prompt, instance masks) whose edits re-run that image. Colorize and Re-run
share one queue of concurrency 1 (one model on one device); each shows a progress bar per denoising step (per frame
for a video). What goes wrong is a message in the page.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo never reports usage anywhere

import gradio as gr  # noqa: E402 - after the analytics switch

from colordiff.demo.core import Colorizer, DemoError, PriorEdits, Session  # noqa: E402
from colordiff.demo.view import (  # noqa: E402
    gallery_items,
    instance_labels,
    instance_overlay,
    instances_on,
    priors_summary,
    result_at,
    shown_priors,
    status_text,
)
from colordiff.schedulers import SCHEDULERS  # noqa: E402
from colordiff.semantics.generators import PRIOR_CHOICES  # noqa: E402

MODEL_SCHEDULER = "model's own"
# the page's controls, in the order the events take them: ColorizeConfig's keys
CONTROL_KEYS = ("steps", "scheduler", "guidance_scale", "seg_strength", "priors", "keep_luminance", "seed",
                "resolution", "num_samples", "prompt")
ERROR_SECONDS = 20  # how long an error message stays (it can be closed earlier)
LOCAL_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline


def build_app(colorizer: Colorizer) -> gr.Blocks:
    """The Blocks app; queue it and launch it with `launch`."""
    with gr.Blocks(title="colordiff demo", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as app:
        page = _page(colorizer)
        events = PageEvents(colorizer)
        shown = [page.state, page.slider, page.gallery, page.video, page.downloads, page.status, page.pick,
                 *page.priors_panel]
        device_queue = {"concurrency_limit": 1, "concurrency_id": "device", "show_progress_on": [page.slider]}
        page.run.click(events.on_colorize, [page.files, *page.controls], shown, api_name="colorize", **device_queue)
        page.rerun.click(events.on_rerun, [page.state, page.pick, page.caption, page.category, page.switched,
                                           *page.controls], shown, api_name="rerun", **device_queue)
        page.pick.input(events.panel, [page.state, page.pick], page.priors_panel, api_visibility="private")
        page.gallery.select(events.on_select, [page.state], [page.slider, page.pick], api_visibility="private").then(
            events.panel, [page.state, page.pick], page.priors_panel, api_visibility="private")
    return app


def _page(colorizer: Colorizer) -> SimpleNamespace:
    """The page's components, laid out (inside the Blocks being built): uploads, button, status and settings on the
    left; slider, gallery, video player and downloads on the right; the priors panel below."""
    c, seada = colorizer.config, colorizer.method == "SeAda"
    page = SimpleNamespace(state=gr.State(None))
    gr.Markdown(f"## colordiff demo\n{colorizer.method} model `{c.model}` on {colorizer.device.type}. "
                "Upload black-and-white photos (or color ones: only their lightness is used) and press Colorize.")
    with gr.Row():
        with gr.Column(scale=1):
            page.files = gr.File(label="Photos or videos (and NAME.priors.json sidecars to reuse priors)",
                                 file_count="multiple", file_types=["image", "video", ".json"], elem_id="uploads")
            page.run = gr.Button("Colorize", variant="primary", elem_id="colorize")
            page.status = gr.Markdown("Nothing colorized yet.", label="Status", elem_id="status")
            with gr.Accordion("Settings", open=True):
                page.controls = _controls(colorizer)
        with gr.Column(scale=2):
            page.slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="slider",
                                         interactive=False)
            page.gallery = gr.Gallery(label="Results (file · seed · sample)", columns=4, fit_columns=False,
                                      object_fit="contain", elem_id="results", interactive=False)
            page.video = gr.Video(label="Colorized video (first upload)", elem_id="video", interactive=False,
                                  visible=False)
            page.downloads = gr.File(label="Downloads (PNG or MP4 at the input's size, priors JSON, zip)",
                                     file_count="multiple", interactive=False, elem_id="downloads")
    with gr.Accordion("Semantic priors of one image: edit and re-run", open=True):
        page.pick = gr.Dropdown(label="Image", choices=[], elem_id="pick", interactive=True)
        page.summary = gr.Markdown("**Priors used:** (colorize a photo first)", label="Priors used",
                                   elem_id="priors")
        with gr.Row():
            page.caption = gr.Textbox(label="Caption (used instead of the captioner's)", elem_id="caption")
            page.category = gr.Textbox(label="Category", elem_id="category", visible=not seada)
        page.overlay = gr.AnnotatedImage(label="Instances", elem_id="overlay", height=360, visible=not seada)
        page.switched = gr.CheckboxGroup(label="Instances used (untick to switch one off)", choices=[],
                                         elem_id="instances", visible=not seada)
        page.rerun = gr.Button("Re-run this image with these priors", elem_id="rerun")
    page.priors_panel = [page.summary, page.caption, page.category, page.overlay, page.switched]
    return page


class PageEvents:
    """What the page's events do with the Colorizer; each returns the new values of the components it updates."""

    def __init__(self, colorizer: Colorizer):
        self.colorizer = colorizer

    def on_colorize(self, photos, steps, scheduler, guidance_scale, seg_strength, priors, keep_luminance, seed,
                    resolution, num_samples, prompt, progress=gr.Progress()):  # noqa: B008 - how gradio asks for a bar
        """Colorize the uploaded photos (the `/colorize` API: the controls' values, in this order)."""
        values = (steps, scheduler, guidance_scale, seg_strength, priors, keep_luminance, seed, resolution,
                  num_samples, prompt)
        try:
            settings = _settings(self.colorizer, values)
            session = self.colorizer.start(list(photos or []), settings, report=_reporter(progress))
        except DemoError as err:
            raise gr.Error(str(err), duration=ERROR_SECONDS) from None
        for message in session.messages:
            gr.Warning(message)
        return self.present(session, 0)

    def on_rerun(self, session, image, caption, category, instances, steps, scheduler, guidance_scale, seg_strength,
                 priors, keep_luminance, seed, resolution, num_samples, prompt, progress=gr.Progress()):  # noqa: B008 - how gradio asks for a bar
        """Colorize image `image` (its index) again with the caption, category and instances given."""
        if session is None or image is None:
            raise gr.Error("colorize an upload first", duration=ERROR_SECONDS)
        values = (steps, scheduler, guidance_scale, seg_strength, priors, keep_luminance, seed, resolution,
                  num_samples, prompt)
        try:
            settings = _settings(self.colorizer, values)
            index = int(image)
            has_instances = bool(instance_labels(session.uploads[index].available)) if index < len(
                session.uploads) else False
            edits = PriorEdits(caption=caption, category=category,
                               instances_on=list(instances or []) if has_instances else None)
            session = self.colorizer.rerun(session, index, settings, edits, report=_reporter(progress))
        except DemoError as err:
            raise gr.Error(str(err), duration=ERROR_SECONDS) from None
        return self.present(session, index)

    def present(self, session: Session, index: int, sample: int = 0):
        if session.uploads:
            upload = session.uploads[index]
            before_after = (upload.gray, upload.results[sample])
        else:  # videos only: their first frame
            index, before_after = None, (session.videos[0].gray, session.videos[0].first)
        player = gr.update(value=str(session.videos[0].path), visible=True) if session.videos else gr.update(
            value=None, visible=False)
        return (session, before_after, gallery_items(session), player, [str(p) for p in session.downloads()],
                status_text(session),
                gr.update(choices=[(u.name, i) for i, u in enumerate(session.uploads)], value=index),
                *self.panel(session, index))

    def panel(self, session: Session | None, index):
        if session is None or index is None:  # no image in this run (videos only): an empty panel
            return ("**Priors used:** (colorize a photo first)", "", "", None,
                    gr.update(choices=[], value=[]))
        upload = session.uploads[int(index)]
        priors = shown_priors(upload)
        labels = instance_labels(upload.available)
        return (priors_summary(upload, self.colorizer.method), (priors.caption or "") if priors else "",
                (priors.category or "") if priors else "", instance_overlay(upload),
                gr.update(choices=[(label, i) for i, label in enumerate(labels)], value=instances_on(upload)))

    def on_select(self, session: Session | None, event: gr.SelectData):
        if session is None:
            return gr.update(), gr.update()
        index, sample = result_at(session, event.index)
        upload = session.uploads[index]
        return (upload.gray, upload.results[sample]), gr.update(value=index)


def _controls(colorizer: Colorizer) -> list:
    """The settings controls, in CONTROL_KEYS order, starting at the loaded config's values."""
    c = colorizer.config
    seada = colorizer.method == "SeAda"
    with gr.Row():
        steps = gr.Slider(1, 200, value=c.steps, step=1, label="Steps", elem_id="steps")
        scheduler = gr.Dropdown([MODEL_SCHEDULER, *SCHEDULERS], value=c.scheduler or MODEL_SCHEDULER,
                                label="Scheduler", elem_id="scheduler")
    with gr.Row():
        guidance = gr.Slider(0, 20, value=c.guidance_scale, step=0.1, label="Guidance scale", elem_id="guidance")
        strength = gr.Slider(0, 1, value=c.seg_strength, step=0.05, label="Segmentation strength",
                             info="not used by SeAda" if seada else "0 turns segmentation guidance off",
                             elem_id="seg_strength")
    with gr.Row():
        priors = gr.Dropdown(list(PRIOR_CHOICES), value=c.priors, label="Priors", elem_id="priors_choice",
                             info="auto: every generator the model records")
        keep = gr.Checkbox(value=c.keep_luminance, label="Keep luminance (the input's exact lightness)",
                           elem_id="keep_luminance")
    with gr.Row():
        seed = gr.Number(value=c.seed, precision=0, label="Seed", elem_id="seed")
        resolution = gr.Number(value=c.resolution, precision=0, label="Resolution (working side, multiple of 8)",
                               elem_id="resolution")
        samples = gr.Slider(1, 8, value=c.num_samples, step=1, label="Samples", elem_id="num_samples")
    prompt = gr.Textbox(value=c.prompt or "", label="Prompt override (empty: the automatic prompt from the priors)",
                        elem_id="prompt")
    return [steps, scheduler, guidance, strength, priors, keep, seed, resolution, samples, prompt]


def _settings(colorizer: Colorizer, values):
    """The run settings from the controls' values (MODEL_SCHEDULER: the model folder's own scheduler)."""
    named = dict(zip(CONTROL_KEYS, values, strict=True))
    if named["scheduler"] in (None, MODEL_SCHEDULER):
        named["scheduler"] = None
    return colorizer.settings(**named)


def _reporter(progress):
    """The core's step (and video frame) reports as the page's progress bar."""
    return lambda done, total, unit="steps": progress((done, total), unit=unit,
                                                      desc="Denoising" if unit == "steps" else "Colorizing video")


def launch(app: gr.Blocks, colorizer: Colorizer, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True):
    """Queue (concurrency 1) and serve the app; blocks until Ctrl-C unless `block` is False."""
    app.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=LOCAL_FONTS, font_mono=["ui-monospace", "monospace"])
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                      max_file_size=f"{colorizer.config.max_upload_mb}mb", allowed_paths=[str(colorizer.workdir)],
                      ssr_mode=False, show_error=False, quiet=True, theme=theme, footer_links=["api"])
