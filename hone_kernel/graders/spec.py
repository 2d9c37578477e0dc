"""Graders in OpenAI's shapes (`openai.types.graders`): what a request may say, checked before anything runs.

Every field OpenAI defines is either honoured or refused by name (`refused`); a template that names anything but
the `item` and `sample` namespaces, a formula over unknown graders, python source without `grade`, are errors
here, at validation, not surprises at grading time."""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hone_kernel.graders import formula, templates
from hone_kernel.strict import UNION_TAGS, StrictModel

PYTHON_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source
NAME_CHARS = 256


def _check_template(value: str) -> str:
    templates.check(value)
    return value


class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class OutputText(StrictModel):
    type: Literal["output_text"]
    text: str


class InputImage(StrictModel):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None


ContentPart = Annotated[InputText | OutputText | InputImage, Field(discriminator="type")]


class GraderMessage(StrictModel):
    """One message of a model grader's prompt; its text may hold templates."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[str | ContentPart]
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            if isinstance(part, InputImage):
                raise ValueError("image inputs are not supported: Hone's grader models read text only")
            _check_template(part if isinstance(part, str) else part.text)
        return content

    def text(self) -> str:
        """The content as one text, parts joined by newlines (what a chat template gets)."""
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "\n".join(p if isinstance(p, str) else p.text for p in parts if not isinstance(p, InputImage))


class _Named(StrictModel):
    name: str = Field(min_length=1, max_length=NAME_CHARS)


class StringCheckGrader(_Named):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]

    @field_validator("input", "reference")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template(value)


SimilarityMetric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class TextSimilarityGrader(_Named):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: SimilarityMetric
    pass_threshold: float | None = None  # evals' testing criteria: a score at or above it passes

    @field_validator("input", "reference")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("evaluation_metric")
    @classmethod
    def _no_cosine(cls, metric: str) -> str:
        if metric == "cosine":
            raise ValueError("'cosine' needs an embedding model, and Hone serves none; use another metric")
        return metric


class PythonGrader(_Named):
    type: Literal["python"]
    source: str
    image_tag: str | None = None
    pass_threshold: float | None = None

    @field_validator("image_tag")
    @classmethod
    def _own_image(cls, tag: str | None) -> str | None:
        if tag is not None:
            raise ValueError("Hone runs python graders in its own sandbox; image_tag is not supported")
        return tag

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, source: str) -> str:
        if len(source.encode()) > PYTHON_SOURCE_BYTES:
            raise ValueError(f"the source is over {PYTHON_SOURCE_BYTES // 1024} KiB")
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise ValueError(f"the source does not parse: {exc.msg} (line {exc.lineno})") from None
        if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
            raise ValueError("the source must define `def grade(sample, item) -> float`")
        return source


class SamplingParams(StrictModel):
    refused = {"reasoning_effort": "Hone's grader models are not reasoning models; reasoning_effort is not supported"}

    max_completions_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    reasoning_effort: str | None = None


class ScoreModelGrader(_Named):
    type: Literal["score_model"]
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _two_bounds(cls, bounds: list[float] | None) -> list[float] | None:
        if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
            raise ValueError("range must be two numbers, the lower first")
        return bounds

    def bounds(self) -> tuple[float, float]:
        low, high = self.range or (0.0, 1.0)
        return low, high


class LabelModelGrader(_Named):
    type: Literal["label_model"]
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _passing_among_labels(self) -> LabelModelGrader:
        missing = sorted(set(self.passing_labels) - set(self.labels))
        if missing:
            raise ValueError(f"passing_labels must be among labels; not in labels: {', '.join(missing)}")
        return self


LeafGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Named):
    type: Literal["multi"]
    graders: dict[str, LeafGrader] = Field(min_length=1)
    calculate_output: str = Field(min_length=1)

    @field_validator("calculate_output")
    @classmethod
    def _formula_over_its_graders(cls, text: str, info: ValidationInfo) -> str:
        formula.check(text, set(info.data.get("graders") or ()))  # (graders failed on their own: no names)
        return text


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader,
    Field(discriminator="type"),
]


class TextSimilarityCriterion(TextSimilarityGrader):
    pass_threshold: float  # required in an eval's testing criteria, as OpenAI's


# An eval's testing criterion (OpenAI's `testing_criteria` items): the graders but `multi`.
TestingCriterion = Annotated[
    LabelModelGrader | StringCheckGrader | TextSimilarityCriterion | PythonGrader | ScoreModelGrader,
    Field(discriminator="type"),
]


def models_of(grader: Any) -> set[str]:
    """The models a grader samples (score_model and label_model, nested in multi too)."""
    if isinstance(grader, MultiGrader):
        return {m for g in grader.graders.values() for m in models_of(g)}
    if isinstance(grader, (ScoreModelGrader, LabelModelGrader)):
        return {grader.model}
    return set()


TYPES = frozenset({"string_check", "text_similarity", "python", "score_model", "label_model", "multi"})
UNION_TAGS.update(TYPES, {"input_text", "output_text", "input_image"})


def _texts(grader: Any) -> list[str]:
    if isinstance(grader, MultiGrader):
        return [t for g in grader.graders.values() for t in _texts(g)]
    if isinstance(grader, (StringCheckGrader, TextSimilarityGrader)):
        return [grader.input, grader.reference]
    if isinstance(grader, (ScoreModelGrader, LabelModelGrader)):
        return [m.text() for m in grader.input]
    return []  # a python grader reads the item in its own code


def item_references(grader: Any) -> list[str]:
    """The `item.*` variables a grader's templates read, as written (`item.label`, `item.choices[0]`), each once:
    what every line of a reinforcement training file must have."""
    found: dict[str, None] = {}
    for text in _texts(grader):
        for match in templates.TEMPLATE.finditer(text):
            namespace, _ = templates.parse_path(match.group(1))
            if namespace == "item":
                found[match.group(1).strip()] = None
    return list(found)


def parse(grader: dict) -> Any:
    """A grader object (as a job or request holds it) as its model; pydantic's ValidationError when it is not one."""
    from pydantic import TypeAdapter

    return TypeAdapter(Grader).validate_python(grader)
