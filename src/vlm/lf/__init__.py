"""Everything vlm knows about LLaMA-Factory 0.9.5, in one place.

* ``vlm.lf.data``: ``dataset_info.json`` and record reading, templates, record conversion, per-example
  encoding, image-token counting, LLaMA-Factory's defaults (from its dataclasses), the log silencer.
* ``vlm.lf.inputs``: prediction inputs encoded as ``do_predict`` encodes them (``PromptEncoder``), M-RoPE
  ``mm_token_type_ids``, stop tokens.
* ``vlm.lf.cli``: finding ``llamafactory-cli``, its argv and launcher variables, running a plan, the merge
  (``export``) config.

Elsewhere, by design: ``vlm.training.validation`` runs LLaMA-Factory's argument parser (``hparams.get_train_args``
and the argument dataclasses, ``data.template.TEMPLATES`` for template names); ``vlm.inference.transformers_backend``
loads the model with ``model.load_model`` (public API). Moving to another LLaMA-Factory version means
re-checking the names below.

Private or undocumented LLaMA-Factory APIs vlm touches, and why:

* ``SupervisedDatasetProcessor._encode_data_example`` / ``UnsupervisedDatasetProcessor._encode_data_example``
  (lf.data.encode_example): the exact per-example tokenization of training and of ``do_predict``; the public
  ``preprocess_dataset`` needs a ``datasets.Dataset`` and drops the per-example view the token budget reports.
* ``data.parser.get_dataset_list`` (lf.data.dataset_attrs): parses ``dataset_info.json`` entries (columns,
  tags) exactly as training does.
* ``data.converter.get_dataset_converter`` (lf.data.record_converter): ShareGPT record ->
  ``_prompt``/``_response``/``_images``, the step between loading and encoding.
* ``data.TEMPLATES`` + ``get_template_and_fix_tokenizer`` (lf.data.load_template): the fixing call mutates
  the shared template (``default_system``...), so vlm restores it afterwards.
* ``template.mm_plugin.expand_mm_tokens`` (lf.data.one_placeholder_per_image): a copy with it off leaves one
  image token per image, so text is encoded without reading pixels (token budget) and vLLM expands images.
* ``template.mm_plugin.process_messages`` + ``extras.constants.IMAGE_PLACEHOLDER``
  (lf.data.image_placeholder_tokens): how many tokens an image of a given size becomes, by the plugin's own
  resize.
* ``template.mm_plugin._regularize_images`` (lf.inputs.PromptEncoder.encode): the training resize
  (``image_max_pixels``/``image_min_pixels``) applied to vLLM's images.
* ``template.mm_plugin.get_mm_inputs`` (lf.inputs.PromptEncoder.batch): pixel tensors as the collator builds them.
* ``data.processor.processor_utils.infer_seqlen`` (lf.inputs.PromptEncoder.check_length): ``do_predict``'s
  truncation rule, to refuse prompts it would cut.
* ``extras.constants.MROPE_MODELS`` (lf.inputs): which model types need 3-D image positions.
* ``extras.constants.IGNORE_INDEX`` (token_budget): the label of untrained tokens.
* ``extras.logging`` and ``LLAMAFACTORY_VERBOSITY`` (lf.data.quiet): LLaMA-Factory logs INFO to stdout;
  its loggers are configured on first use, so vlm configures them first, then raises their level.
* Launcher variables ``FORCE_TORCHRUN``, ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``,
  ``NPROC_PER_NODE``, ``USE_RAY`` (lf.cli.ScaleOut) and ``DISABLE_VERSION_CHECK`` (vlm.inference.predict): read by
  ``llamafactory-cli`` (``launcher.py``), not documented as an API.
"""
