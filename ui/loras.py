"""The 'LoRAs & fast mode' panel of both apps: LoRA slots (picker + scale), the Fast toggle, and their API inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import InvalidParameterError
from core.models.lora import MAX_SCALE, MIN_SCALE, LoraSpec, coerce_loras, list_local_loras
from core.params import RelightParams
from core.recipe.fast import FAST_PRESETS, FastMode, fast_defaults

LORA_SLOTS = 3  # LoRAs the page offers at once (the API and the CLI take any number)
SCALE_STEP = 0.05
FAST_LABELS = {
    FastMode.OFF: "Off (official recipe)",
    FastMode.LCM: f"LCM ({FAST_PRESETS[FastMode.LCM].steps} steps)",
    FastMode.TCD: f"TCD ({FAST_PRESETS[FastMode.TCD].steps} steps)",
    FastMode.HYPER: f"Hyper-SD ({FAST_PRESETS[FastMode.HYPER].steps} steps)",
}
PANEL_NOTE = (
    "SD 1.5 LoRAs from `models/loras/` (or type a Hub id, `owner/repo`), each with its scale in [-2, 2]. "
    "Fast mode adds a few-step LoRA and its scheduler and sets Steps and CFG (both still adjustable): much faster, "
    "but these LoRAs were not trained with IC-Light, so results differ from the official recipe. See docs/loras.md."
)


def slot_values(loras: Any) -> list[Any]:
    """Picker and scale of every slot (pickers empty, scales 1 past the given LoRAs) for a `loras` value."""
    specs = coerce_loras(loras)
    if len(specs) > LORA_SLOTS:
        raise InvalidParameterError(f"the page holds {LORA_SLOTS} LoRAs but the settings have {len(specs)}")
    values: list[Any] = []
    for i in range(LORA_SLOTS):
        spec = specs[i] if i < len(specs) else None
        values += [spec.source if spec else None, spec.scale if spec else 1.0]
    return values


def loras_value(*slots: Any) -> list[str]:
    """The `loras` input ('SOURCE:SCALE' strings) from the slots' (picker, scale) values; empty pickers skipped."""
    pairs = zip(slots[::2], slots[1::2], strict=True)
    return [LoraSpec(source, float(scale)).to_text() for source, scale in pairs if source and str(source).strip()]


def steps_and_cfg(mode, fast: str) -> tuple[int, float]:
    """The Steps and CFG sliders' values when the Fast toggle changes: fast mode's, or the app's official ones."""
    defaults = {**{k: getattr(RelightParams.for_mode(mode), k) for k in ("steps", "cfg")}, **fast_defaults(fast)}
    return defaults["steps"], defaults["cfg"]


def batch_lora_inputs(models_dir: Path) -> dict[str, Any]:
    """The batch tab's `fast` and `loras` inputs: one row, LoRAs as 'SOURCE[:SCALE]' choices (typed ones too)."""
    with gr.Row():
        fast = gr.Dropdown([(text, mode.value) for mode, text in FAST_LABELS.items()], value=FastMode.OFF.value,
                           label="Fast mode")  # fmt: skip
        loras = gr.Dropdown(list_local_loras(models_dir), value=[], multiselect=True, allow_custom_value=True,
                            label="LoRAs (add ':0.6' for a scale)", scale=3)  # fmt: skip
    return {"fast": fast, "loras": loras}


def build_loras(page, models_dir: Path) -> None:
    """Lay out and wire the panel; adds the `fast` and `loras` inputs of /relight (call after the Advanced panel)."""
    private = {"api_visibility": "private", "queue": False}
    choices = list_local_loras(models_dir)
    slots: list[Any] = []
    with gr.Accordion("LoRAs & fast mode", open=False):
        gr.Markdown(PANEL_NOTE)
        page.inputs["fast"] = gr.Radio(
            [(text, mode.value) for mode, text in FAST_LABELS.items()], value=FastMode.OFF.value, label="Fast mode"
        )
        for i in range(LORA_SLOTS):
            with gr.Row(equal_height=True):
                slots.append(gr.Dropdown(choices, value=None, allow_custom_value=True, label=f"LoRA {i + 1}",
                                         scale=3, elem_id=f"lora-{i + 1}"))  # fmt: skip
                slots.append(gr.Slider(MIN_SCALE, MAX_SCALE, value=1.0, step=SCALE_STEP, label="Scale", scale=2,
                                       elem_id=f"lora-scale-{i + 1}"))  # fmt: skip
        # The one API input for any number of LoRAs: ["file.safetensors:0.6", "owner/repo:1"]; the slots edit it.
        page.inputs["loras"] = gr.JSON(value=[], visible=False, label="LoRAs")
    page.parts["lora_slots"] = slots

    def from_slots(*values: Any) -> list[str]:
        try:
            return loras_value(*values)
        except InvalidParameterError as exc:
            raise gr.Error(str(exc)) from None

    def to_slots(loras: Any) -> list[Any]:
        try:
            return slot_values(loras)
        except InvalidParameterError:
            return [gr.skip()] * len(slots)  # the API may send more than the page shows; the job checks them

    gr.on([c.input for c in slots], from_slots, inputs=slots, outputs=page.inputs["loras"], **private)
    page.inputs["loras"].change(to_slots, inputs=page.inputs["loras"], outputs=slots, **private)
    mode = page.spec.mode
    page.inputs["fast"].input(
        lambda fast: steps_and_cfg(mode, fast), inputs=page.inputs["fast"],
        outputs=[page.inputs["steps"], page.inputs["cfg"]], **private,
    )  # fmt: skip
