"""Graders, in OpenAI's shapes: one package for graders/run, evals and reinforcement fine-tuning.

- spec: the grader types as requests state them, validated (unknown and refused fields name themselves);
- templates: `{{ item.x }}` and `{{ sample.output_text }}` as OpenAI renders them;
- run: `grade(grader, sample, item, env)` -> a reward and OpenAI's error flags;
- similarity, formula: text_similarity's metrics and the multi grader's arithmetic;
- sandbox (+ sandbox_child): the python grader's process, with its limits.

Nothing here imports the control plane or the trainer: both use it."""
