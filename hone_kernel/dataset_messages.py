"""A dataset line of any chat-like format as OpenAI chat messages: what the trainer trains on, and what an
evaluation of the tuned model asks it (service/job_evaluation.py), so that both read a line alike. Standard
library only."""

from __future__ import annotations

from hone_kernel.images import gemini_data_url


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _has_image(content) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)


def _parts(content: list) -> list[dict]:
    """Content parts as a vision model's chat template reads them: text and image_url parts, in order."""
    return [
        {"type": "image_url", "image_url": {"url": p["image_url"]["url"]}}
        if p.get("type") == "image_url"
        else {"type": "text", "text": p.get("text", "")}
        for p in content
        if isinstance(p, dict)
    ]


def gemini_image_part(blob: dict) -> dict:
    """A Gemini inlineData image ({mimeType, data}) as an OpenAI image_url content part (a data URL): how training
    lines and Vertex generateContent requests both reach a vision model."""
    mime = blob.get("mimeType", blob.get("mime_type")) or ""
    return {"type": "image_url", "image_url": {"url": gemini_data_url(mime, str(blob.get("data") or ""))}}


def _gemini_content(parts) -> str | list[dict]:
    """A Gemini turn's parts: its text, or (with inlineData images) text and image_url parts in order."""
    if not any(isinstance(p, dict) and ("inlineData" in p or "inline_data" in p) for p in parts or []):
        return _text(parts)
    out: list[dict] = []
    for part in parts:
        blob = part.get("inlineData", part.get("inline_data"))
        if isinstance(blob, dict):
            out.append(gemini_image_part(blob))
        else:
            out.append({"type": "text", "text": part.get("text", "")})
    return out


def clean_message(msg: dict) -> dict:
    """A message without Hone's training keys; its content as text, or (when it holds images) as parts."""
    clean = {k: v for k, v in msg.items() if k != "weight"}
    if "content" in clean and not isinstance(clean["content"], (str, type(None))):
        content = clean["content"]
        clean["content"] = _parts(content) if _has_image(content) else _text(content)
    if clean.get("content") is None:
        clean["content"] = ""
    return clean


def to_messages(row: dict, fmt: str) -> tuple[list[dict], list[bool], list | None]:
    """Returns (messages, trained flags per message, tools) in OpenAI chat shape."""
    if fmt == "openai_chat":
        messages = [clean_message(msg) for msg in row["messages"]]
        trained = [msg["role"] == "assistant" and msg.get("weight", 1) != 0 for msg in row["messages"]]
        return messages, trained, row.get("tools")
    if fmt in ("vertex_gemini", "vertex_prompts"):
        messages = []
        system = row.get("systemInstruction") or row.get("system_instruction")
        if system:
            messages.append({"role": "system", "content": _text(system.get("parts"))})
        for turn in row["contents"]:
            role = "assistant" if turn["role"] == "model" else "user"
            messages.append({"role": role, "content": _gemini_content(turn.get("parts"))})
        # A prompt line's model turns are context, not answers: nothing of it is trained.
        trained = [fmt == "vertex_gemini" and m["role"] == "assistant" for m in messages]
        return messages, trained, None
    if fmt == "vertex_legacy":
        pair = (row["input_text"], row["output_text"])
    elif fmt == "pairs":
        prompt = row.get("input", "")
        if "instruction" in row:
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        pair = (prompt, row["output"])
    else:
        raise ValueError(f"format {fmt!r} is not a chat format")
    return ([{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}], [False, True], None)


def prompt_and_reference(row: dict, fmt: str) -> tuple[list[dict], str] | None:
    """A line as an evaluation row: the messages before its last trained assistant message, and that message's
    text (the reference answer). Preference lines: the input and the preferred answer. None: nothing to ask."""
    if fmt == "openai_preference":
        preferred = row.get("preferred_output") or row.get("preferred_completion") or []
        messages = [clean_message(m) for m in (row.get("input") or {}).get("messages", [])]
        return (messages, _text(preferred[-1].get("content"))) if preferred and messages else None
    messages, trained, _ = to_messages(row, fmt)
    last = max((i for i, t in enumerate(trained) if t), default=None)
    if last is None or last == 0:
        return None
    return messages[:last], messages[last]["content"]
