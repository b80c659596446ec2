"""The default of `mesh.rules`: logical axis name → mesh axes (None: replicated).

One table for parameters and activations: parameters use `embed`, `mlp`, `heads`, ...; activations
use `batch`, `length` and the `activation_*` names (the activation's feature dimensions, kept apart
from the parameters' because `embed` shards parameters over fsdp while the residual stream must
not be).
"""

DEFAULT_LOGICAL_AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('activation_embed', None),
    ('activation_heads', 'tensor'),
    ('activation_kv_heads', 'tensor'),
    ('activation_mlp', 'tensor'),
    ('activation_vocab', 'tensor'),
    ('activation_mamba_heads', 'tensor'),
    ('activation_mamba_groups', 'tensor'),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('norm', None),
    ('mamba_heads', 'tensor'),
    ('mamba_groups', 'tensor'),
    ('mamba_head_dim', None),
    ('ssm_state', None),
    ('conv_kernel', None),
    ('layers', None),  # the stacked axis of scanned layers (model.scan_layers)
)
