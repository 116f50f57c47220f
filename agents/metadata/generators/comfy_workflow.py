"""ComfyUI UI-format ``workflow`` -> an API-format graph, for files that carry only the workflow.

Workflow exports (and some savers) have no ``prompt`` chunk. The UI format keeps widget values positionally in
``widgets_values`` and links in a separate table, so we rebuild ``{id: {class_type, inputs}}`` and reuse the one
graph walker instead of writing a second parser. Widget names come from a table of core nodes, else from the
node's own ``inputs[].widget`` entries (newer frontends list them), else from a dict ``widgets_values`` (VHS);
nodes we cannot name keep only their links. This is best-effort by nature: a linked widget whose source we
cannot evaluate stays unknown rather than taking the stale value the UI kept beside it.
"""

from __future__ import annotations

from typing import Any

_CONTROL = "control_after_generate"
_CONTROL_VALUES = frozenset({"fixed", "randomize", "increment", "decrement"})

#: Widget order of core nodes (what the UI writes into ``widgets_values``).
WIDGETS: dict[str, tuple[str, ...]] = {
    "KSampler": ("seed", _CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", _CONTROL, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "SamplerCustom": ("add_noise", "noise_seed", _CONTROL, "cfg"),
    "RandomNoise": ("noise_seed", _CONTROL),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "SDTurboScheduler": ("steps", "denoise"),
    "CFGGuider": ("cfg",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "UnetLoaderGGUF": ("unet_name",),
    "VAELoader": ("vae_name",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g",
                           "text_l"),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl", "guidance"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "FluxGuidance": ("guidance",),
    "LoadImage": ("image", "upload"),
    "ModelSamplingFlux": ("max_shift", "base_shift", "width", "height"),
    "PrimitiveNode": ("value", _CONTROL),
}


def _is_control(v: Any) -> bool:
    return isinstance(v, str) and v in _CONTROL_VALUES


def _assign(names: list[str], values: list[Any]) -> dict[str, Any]:
    """Zip widget names with values, skipping the seed control value ("randomize"...) wherever it appears."""
    out: dict[str, Any] = {}
    vi = 0
    for name in names:
        if vi >= len(values):
            break
        if name == _CONTROL:
            if _is_control(values[vi]):
                vi += 1
            continue
        out[name] = values[vi]
        vi += 1
        if "seed" in name and vi < len(values) and _is_control(values[vi]) and _CONTROL not in names:
            vi += 1
    return out


def _link_table(workflow: dict[str, Any]) -> dict[Any, tuple[str, int]]:
    table: dict[Any, tuple[str, int]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 5 and isinstance(link[0], int):
            table[link[0]] = (str(link[1]), link[2])
        elif isinstance(link, dict) and isinstance(link.get("id"), int):
            table[link["id"]] = (str(link.get("origin_id")), link.get("origin_slot", 0))
    return table


def workflow_to_api(workflow: dict[str, Any]) -> dict[str, Any]:
    """An API-format graph from a UI workflow; muted nodes (mode 2) are left out as ComfyUI itself does."""
    links = _link_table(workflow)
    api: dict[str, Any] = {}
    for node in workflow.get("nodes") or []:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str) or node.get("mode") == 2:
            continue
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        ins = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
        if isinstance(values, dict):
            inputs.update(values)
        elif isinstance(values, list):
            names = WIDGETS.get(node["type"])
            if names is None:
                names = tuple(str(i["name"]) for i in ins if isinstance(i.get("widget"), dict) and "name" in i)
            inputs.update(_assign(list(names), values))
        for i in ins:
            link = links.get(i["link"]) if isinstance(i.get("link"), int) else None
            if link is not None and isinstance(link[1], int):
                inputs[str(i.get("name"))] = [link[0], link[1]]
        if node["type"] == "Reroute" and not inputs:
            continue
        api[str(node.get("id"))] = {"class_type": node["type"], "inputs": inputs}
    return api
