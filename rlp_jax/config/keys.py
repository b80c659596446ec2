"""Every config key rlp_jax knows, declared once: default, allowed values or range, one-line doc.

The type of a key is its default's (an int is accepted for a float key). Where an implementation
keeps its own table of names (model families, remat modes, dtypes, corpora, tokenizer kinds,
advantage estimators, position rules, prefix strategies) the key takes its choices from that
table, so adding a choice is one edit there. This package sits above data/, models/, objective/
and rollout/; none of them imports rlp_jax.config. Relations between keys (a head count dividing
another, a marker required by a rule, a family's own keys) are checked in relations.py.

Regenerate the table in docs/configuration.md after an edit here:
`python -m rlp_jax.config --update-docs`.
"""
from __future__ import annotations

from rlp_jax.config.axis_rules import DEFAULT_LOGICAL_AXIS_RULES
from rlp_jax.config.declaration import (FRACTION, MESH_SIZE, NON_NEGATIVE, POSITIVE, Key, Range,
                                        at_least)
from rlp_jax.data.corpora import CORPORA
from rlp_jax.data.reasoning_corpus import WORKED_FRACTION
from rlp_jax.data.source_spec import BAD_RECORD_POLICIES
from rlp_jax.data.tokenizer import TOKENIZER_KINDS
from rlp_jax.models.attention_kernels import ATTENTION_IMPLS
from rlp_jax.models.layers import DTYPES, REMAT_POLICIES
from rlp_jax.models.registry import FAMILIES
from rlp_jax.objective.advantage import ADVANTAGE_ESTIMATORS
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS
from rlp_jax.rollout.positions import POSITION_RULES
from rlp_jax.rollout.prefix_strategies import PREFIX_STRATEGIES

# Choices no implementation table holds (the code reading the key tests these names).
OPTIMIZER_SCHEDULES = ('cosine', 'constant')
TRUNCATED_THOUGHTS = ('keep', 'no_gradient')
PROCESS_COUNT_CHANGE = ('error', 'restart')

# Section name → one-line doc ('' holds the top-level keys). The order is base_config()'s.
SECTIONS = {
    '': 'the run',
    'data': 'the corpus and the document batches',
    'tokenizer': 'the tokenizer (docs/models.md, "Tokenizers")',
    'model': 'the model family and its sizes (docs/models.md)',
    'optimizer': 'AdamW with linear warmup, then a cosine or constant schedule',
    'rlp': 'the RLP objective (docs/objective.md); paper settings: presets.paper_rlp',
    'mesh': 'device mesh and sharding (docs/scaling.md)',
    'train': 'the training loop',
    'eval': 'held-out evaluation (docs/evaluation.md)',
}

KEYS: tuple[Key, ...] = (
    Key('seed', 0, 'seed of the run: parameter init, document order, rollout sampling',
        bounds=NON_NEGATIVE),

    Key('data.corpus', 'reasoning', "`reasoning`: the embedded reasoning generator; "
        '`local_text`: the files of `data.files`', choices=CORPORA),
    Key('data.data_dir', '', "where corpora and tokenizers are cached; '' → $RLP_JAX_DATA_DIR "
        'or ~/.cache/rlp_jax/data'),
    Key('data.num_documents', 20000, 'size of the embedded reasoning corpus', bounds=POSITIVE),
    Key('data.corpus_seed', 0, 'seed of the embedded reasoning corpus', bounds=NON_NEGATIVE),
    Key('data.worked_fraction', WORKED_FRACTION, 'share of embedded-corpus documents that show '
        'worked `<think>` steps (0: answer-only)', bounds=NON_NEGATIVE),
    Key('data.files', '', "comma-separated .txt / .jsonl paths or globs for corpus "
        "`local_text` (a .txt file is one document, a .jsonl line is one); local or URLs "
        '(gs://…; no `**` in a URL)'),
    Key('data.text_field', 'text', 'the jsonl field holding the document text'),
    Key('data.seq_len', 96, 'tokens per row (a longer document is split into windows, shorter '
        'rows are padded or packed)', bounds=at_least(2)),
    Key('data.sources', '', "the training mixture, `KIND(ARGS)@WEIGHT; ...` with KIND "
        '`embedded`, `files(GLOBS, field=text)` (.txt/.jsonl[.gz|.zst]/.parquet, local or gs://) '
        "or `tfds(NAME, split=train, data_dir=DIR)` (docs/data.md); '' → `data.corpus`"),
    Key('data.window_stride', 0, 'a document longer than data.seq_len is split into windows '
        "starting every this many tokens (0: data.seq_len, windows that do not overlap)",
        bounds=NON_NEGATIVE),
    Key('data.packing', False, 'pack several documents (windows) per row with segment ids; '
        'attention, the Mamba scan and RLP positions stay inside each document'),
    Key('data.workers', 0, 'data loader worker processes (Grain mp_prefetch; 0: the pipeline '
        'runs in one background thread)', bounds=NON_NEGATIVE),
    Key('data.prefetch', 4, 'batches kept ready ahead of the training step (0: none)',
        bounds=NON_NEGATIVE),
    Key('data.tokenize_chunk', 256, 'records tokenized per batched encode call',
        bounds=POSITIVE),
    Key('data.on_bad_record', 'error', '`error`: stop with one line naming the file and line; '
        '`skip`: skip it, counted in the metric data/bad_records', choices=BAD_RECORD_POLICIES),
    Key('data.on_process_count_change', 'error', 'resuming with another number of processes, '
        "whose readers split the data differently: `error`, or `restart` the data order (seeded "
        'by seed and step; records may repeat)', choices=PROCESS_COUNT_CHANGE),
    Key('data.batch_size', 8, 'documents per step (−1: one per batch shard, i.e. the product of '
        'the mesh axes the `batch` rule names, data × fsdp by default)', bounds=MESH_SIZE),

    Key('tokenizer.kind', 'sentencepiece', '`sentencepiece` (trained on the corpus, or a .model '
        'at `path`) or `hf_json` (a Hugging Face tokenizer.json at `path`)',
        choices=TOKENIZER_KINDS),
    Key('tokenizer.path', '', "'' → a sentencepiece model trained on the corpus at first use and "
        "cached under data_dir; for hf_json the file or its directory ('': the tokenizer.json "
        'of `model.init_from`)'),
    Key('tokenizer.vocab_size', 512, 'size of a trained sentencepiece vocabulary (hf_json: the '
        'file decides)', bounds=POSITIVE),

    Key('model.family', 'dense', '`dense` (Qwen3) or `hybrid` (Nemotron-H: Mamba2 + attention + '
        'MLP)', choices=FAMILIES),
    Key('model.init_from', '', "'' random init; a Hugging Face model dir or an rlp_jax "
        'checkpoint dir (local or a URL such as gs://…; either layer layout)'),
    Key('model.allow_random_init', True, 'train from random weights when `model.init_from` is '
        "''; the recipes that continue a pretrained base set False, so that a run without "
        '`init_from` stops at start-up with one line'),
    Key('model.vocab_size', 512, 'rows of the embedding; ≥ the tokenizer vocabulary',
        bounds=POSITIVE),
    Key('model.hidden_size', 128, 'width of the residual stream', bounds=POSITIVE),
    Key('model.intermediate_size', 384, 'width of the MLP', bounds=POSITIVE),
    Key('model.num_layers', 4, 'decoder layers (hybrid: the length of `layer_pattern`)',
        bounds=POSITIVE),
    Key('model.num_heads', 4, 'attention query heads', bounds=POSITIVE),
    Key('model.num_kv_heads', 2, 'key/value heads (grouped-query attention; divides num_heads)',
        bounds=POSITIVE),
    Key('model.head_dim', 32, 'size of one attention head', bounds=POSITIVE),
    Key('model.rope_theta', 1_000_000.0, 'RoPE base θ (dense)', bounds=POSITIVE),
    Key('model.norm_eps', 1e-6, 'RMSNorm epsilon', bounds=POSITIVE),
    Key('model.tie_embeddings', True, 'the output head is the transposed embedding'),
    Key('model.param_dtype', 'float32', 'dtype parameters are stored in', choices=DTYPES),
    Key('model.compute_dtype', 'float32', 'dtype of activations and matmuls', choices=DTYPES),
    Key('model.init_std', 0.02, 'std of the random normal init', bounds=POSITIVE),
    Key('model.remat_policy', 'full', 'what the backward pass keeps of each decoder layer: '
        '`full` recomputes the layer (only the residual stream between layers is kept), '
        '`save_matmuls` keeps the matmul outputs and recomputes the rest, `none` keeps every '
        'activation', choices=REMAT_POLICIES),
    Key('model.attention_impl', 'reference', 'what runs the attention softmax: `reference` the '
        'plain einsum softmax; `dot_product` jax.nn.dot_product_attention (cuDNN flash attention '
        'on GPU for bf16); `pallas` Pallas flash kernels for causal self-attention (splash '
        'attention on TPU, the Pallas GPU kernel on GPU; decode steps stay on the reference). '
        'The shared-prefix thought attention merges two kernel calls by their log-sum-exps '
        '(docs/models.md)', choices=ATTENTION_IMPLS),
    Key('model.logits_chunk_tokens', DEFAULT_CHUNK_TOKENS, 'tokens per device whose fp32 logits '
        'over the vocabulary the next-token loss, thought log-probs and teacher statistics take '
        'at a time, recomputed in the backward pass (0: all at once, the reference); 1024 keeps '
        'the lm-head matmul compute-bound on H100/TPU at ≈ 0.6 GiB of logits per chunk for '
        'V = 152k (docs/performance.md)', bounds=NON_NEGATIVE),
    Key('model.scan_layers', False, 'run the layers under jax.lax.scan over their repeating unit '
        '(parameters stacked per unit position; compile time independent of depth); checkpoints '
        'of either layout load into the other'),
    Key('model.layer_pattern', '', 'hybrid only: one character per layer, M Mamba2, * attention '
        '(no RoPE), - MLP (squared ReLU); each layer is x + mixer(RMSNorm(x))'),
    Key('model.mamba_num_heads', 0, 'hybrid: Mamba2 heads (> 0 when the pattern has M)'),
    Key('model.mamba_head_dim', 0, 'hybrid: size of one Mamba2 head (> 0 with M layers)'),
    Key('model.ssm_state_size', 0, 'hybrid: Mamba2 SSM state size (> 0 with M layers)'),
    Key('model.mamba_n_groups', 1, 'hybrid: Mamba2 B/C groups (divides mamba_num_heads)'),
    Key('model.mamba_conv_kernel', 4, 'hybrid: width of the depthwise causal conv'),
    Key('model.mamba_chunk_size', 128, 'hybrid: chunk length of the SSD scan'),
    Key('model.mamba_dt_limit_min', 0.0, 'hybrid: dt = clamp(softplus(dt + dt_bias), min, max)'),
    Key('model.mamba_dt_limit_max', float('inf'), 'hybrid: upper dt clamp (≥ mamba_dt_limit_min)',
        infinity_ok=True),

    Key('optimizer.learning_rate', 3e-3, 'peak learning rate', bounds=POSITIVE),
    Key('optimizer.schedule', 'cosine', 'after the linear warmup: `cosine` decay or `constant`',
        choices=OPTIMIZER_SCHEDULES),
    Key('optimizer.warmup_steps', 20, 'optimizer steps of linear warmup from 0',
        bounds=NON_NEGATIVE),
    Key('optimizer.final_lr_fraction', 0.1, 'cosine ends at learning_rate × final_lr_fraction',
        bounds=FRACTION),
    Key('optimizer.weight_decay', 0.01, 'AdamW decoupled weight decay', bounds=NON_NEGATIVE),
    Key('optimizer.b1', 0.9, 'Adam β1'),
    Key('optimizer.b2', 0.95, 'Adam β2'),
    Key('optimizer.eps', 1e-8, 'Adam ε', bounds=POSITIVE),
    Key('optimizer.grad_clip_norm', 1.0, 'global gradient-norm clip', bounds=POSITIVE),

    Key('rlp.enabled', True, 'False: plain next-token pretraining (no teacher in the state)'),
    Key('rlp.positions_per_document', 2, 'K scored positions per row (the documents of a packed '
        'row share them)', bounds=POSITIVE),
    Key('rlp.thoughts_per_position', 4, 'G thoughts per position: the advantage group, compared '
        'within (paper 16)', bounds=at_least(2)),
    Key('rlp.max_thought_tokens', 24, 'T: `</think>` is forced after T sampled tokens (paper up '
        'to 2048)', bounds=POSITIVE),
    Key('rlp.min_context', 8, 'tokens of history required before a scored position (< seq_len)',
        bounds=POSITIVE),
    Key('rlp.sample_temperature', 0.7, 'sampling temperature of thoughts; 0 samples greedily',
        bounds=NON_NEGATIVE),
    Key('rlp.ema_decay', 0.9, 'τ of the teacher φ ← τ φ + (1 − τ) θ (paper 0.999 from a base '
        'model; the tiny model learns from scratch, see configs/tiny.py)', bounds=FRACTION),
    Key('rlp.epsilon_low', 0.2, 'clip band of the importance ratio: [1 − ε_low, 1 + ε_high]',
        bounds=Range(low=0, high=1, high_open=True)),
    Key('rlp.epsilon_high', 0.2, 'upper side of the clip band', bounds=NON_NEGATIVE),
    Key('rlp.ntp_weight', 1.0, 'weight of the next-token loss in the combined update (paper 0)',
        bounds=NON_NEGATIVE),
    Key('rlp.kl_weight', 0.0, 'weight of KL(θ‖φ) on thought tokens (paper 0)',
        bounds=NON_NEGATIVE),
    Key('rlp.updates_per_rollout', 1, 'optimizer steps taken on one rollout batch',
        bounds=POSITIVE),
    Key('rlp.advantage_estimator', 'group', '`group`, `leave_one_out` (the same number), '
        '`group_std` (÷ group std, GRPO), `batch_std` (÷ batch std of group-centred rewards); '
        'docs/objective.md step 6', choices=ADVANTAGE_ESTIMATORS),
    Key('rlp.position_rule', 'uniform', 'how the K positions are drawn: uniformly, ∝ the EMA '
        "teacher's loss / entropy there, or the token after `position_marker`; docs/objective.md "
        'step 1', choices=POSITION_RULES),
    Key('rlp.position_marker', '', "the text whose following token `after_marker` scores, e.g. "
        "'Answer: '"),
    Key('rlp.truncated_thoughts', 'keep', 'thoughts that reach T without `</think>`: `keep` their '
        'advantage, or `no_gradient` (advantage 0, as DAPO overlong filtering); docs/objective.md '
        'step 6',
        choices=TRUNCATED_THOUGHTS),
    Key('rlp.prefix_mode', 'shared', '`shared`: one document pass serves all K·G rollouts '
        '(attention K/V and Mamba2 states shared); `naive`: re-encode `x_<t` per rollout (the '
        'reference)', choices=PREFIX_STRATEGIES),

    Key('mesh.data', -1, 'data-parallel replicas (−1: all devices left over)', bounds=MESH_SIZE),
    Key('mesh.fsdp', 1, 'parameters, gradients and optimizer state sharded over this axis',
        bounds=MESH_SIZE),
    Key('mesh.tensor', 1, 'tensor parallelism (heads, MLP, vocab)', bounds=MESH_SIZE),
    Key('mesh.rules', DEFAULT_LOGICAL_AXIS_RULES, 'logical axis name → mesh axes (None: '
        'replicated), for parameters and activations',
        shown_default='`DEFAULT_LOGICAL_AXIS_RULES` (below)'),

    Key('train.num_steps', 200, 'batches; the optimizer takes num_steps · updates_per_rollout '
        'steps', bounds=POSITIVE),
    Key('train.log_every', 1, 'write metrics every N batches', bounds=POSITIVE),
    Key('train.checkpoint_every', 50, 'save a checkpoint every N batches', bounds=POSITIVE),
    Key('train.keep_checkpoints', 3, 'checkpoints kept on disk', bounds=POSITIVE),
    Key('train.allow_data_change', False, 'resume although the training documents changed since '
        'the checkpoint (the tokenizer and model shape must not; train/run_identity.py)'),
    Key('train.progress_bar', True, 'show the progress bar (process 0)'),
    Key('train.max_nonfinite_steps', 10, 'stop the run (with a checkpoint of the last finite '
        'state) after this many batches in a row whose update was skipped for a non-finite loss, '
        'gradient norm or update', bounds=POSITIVE),
    Key('train.eval_every', 0, 'run the evaluator (config.eval) every N batches and at the end; '
        '0: never', bounds=NON_NEGATIVE),
    Key('train.sample_every', 50, 'write thought samples (context tail, thought, next token, '
        'S_pred, S_ema, reward, advantage) to thoughts.jsonl and TensorBoard every N batches and '
        'at the end (docs/inspect.md); 0: never', bounds=NON_NEGATIVE),
    Key('train.sample_count', 4, 'thought samples: scored positions shown, each from another '
        'document of the batch', bounds=POSITIVE),
    Key('train.sample_thoughts', 2, 'thought samples: thoughts shown per position (the first of '
        'its group of rlp.thoughts_per_position; 2 or more show the group contrast)',
        bounds=POSITIVE),
    Key('train.sample_context_tokens', 32, 'thought samples: tokens of the context shown before '
        'the thought', bounds=POSITIVE),

    Key('eval.num_documents', 64, 'held-out documents (validation split) for next-token loss '
        'and gain', bounds=NON_NEGATIVE),
    Key('eval.num_problems', 64, 'held-out problems per accuracy source', bounds=NON_NEGATIVE),
    Key('eval.benchmarks', '', 'comma-separated jsonl files (GSM8K or MATH format) scored for '
        'accuracy'),
    Key('eval.vote_samples', 4, 'k sampled thoughts per problem for the majority vote',
        bounds=POSITIVE),
    Key('eval.thoughts_per_position', 4, 'thoughts per position for the sampled information gain',
        bounds=POSITIVE),
    Key('eval.max_answer_tokens', 12, 'an answer ends at a newline, eos, or after this many '
        'tokens', bounds=POSITIVE),
    Key('eval.rows_per_call', 64, 'generation rows per jitted call (fixed, so each phase '
        'compiles once)', bounds=POSITIVE),
    Key('eval.seed', 0, 'positions and sampled thoughts of the evaluation (the same for every '
        'checkpoint)', bounds=NON_NEGATIVE),
)

KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}
