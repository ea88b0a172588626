"""A second, deliberately plain implementation of the HSPNet forward pass, written from the method as
docs/method.md states it (sections 1 and 2) with loops and elementary tensor ops, used only by the tests to check
`hspnet.models.hspnet.modeling_hspnet`.

It shares no code with the package: the CLIP text transformer, the relation processing, the GCN and the meta-net are
all re-written here from their definitions.
"""

import math

import torch


def plain_process_relation(block, keep_ratio=0.75, p=0.2):
    n = len(block)
    k = int(keep_ratio * n)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        row = [float(v) for v in block[i]]
        order = sorted(range(n), key=lambda j: -row[j])[:k]
        kept = [row[j] if (j in order and j != i) else 0.0 for j in range(n)]
        total = sum(kept)
        for j in range(n):
            out[i][j] = (1 - p) if i == j else kept[j] / total * p
    return torch.tensor(out, dtype=torch.float64)


def plain_layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def plain_text_encoder(state, text_config, embeds, eos_positions, prefix="text_model."):
    """CLIP's causal text transformer on token embeddings `(N, L, W)`, one prompt at a time, float64."""
    heads = text_config.num_attention_heads
    eps = text_config.layer_norm_eps
    outputs = []
    for n in range(embeds.shape[0]):
        x = embeds[n].double() + state[prefix + "embeddings.position_embedding.weight"][: embeds.shape[1]].double()
        length, width = x.shape
        head_dim = width // heads
        for layer in range(text_config.num_hidden_layers):
            p = lambda name: state[f"{prefix}encoder.layers.{layer}.{name}"].double()  # noqa: E731
            h = plain_layer_norm(x, p("layer_norm1.weight"), p("layer_norm1.bias"), eps)
            q = h @ p("self_attn.q_proj.weight").T + p("self_attn.q_proj.bias")
            k = h @ p("self_attn.k_proj.weight").T + p("self_attn.k_proj.bias")
            v = h @ p("self_attn.v_proj.weight").T + p("self_attn.v_proj.bias")
            attended = torch.zeros_like(h)
            for head in range(heads):
                sl = slice(head * head_dim, (head + 1) * head_dim)
                for t in range(length):  # causal: position t sees positions 0..t
                    scores = (k[: t + 1, sl] @ q[t, sl]) / math.sqrt(head_dim)
                    weights = torch.softmax(scores, dim=0)
                    attended[t, sl] = weights @ v[: t + 1, sl]
            x = x + attended @ p("self_attn.out_proj.weight").T + p("self_attn.out_proj.bias")
            h = plain_layer_norm(x, p("layer_norm2.weight"), p("layer_norm2.bias"), eps)
            h = h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
            h = h * torch.sigmoid(1.702 * h)  # quick_gelu
            x = x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        x = plain_layer_norm(
            x, state[prefix + "final_layer_norm.weight"].double(), state[prefix + "final_layer_norm.bias"].double(), eps
        )
        outputs.append(x[int(eos_positions[n])] @ state["text_projection.weight"].double().T)
    return torch.stack(outputs)


def plain_gcn(features, adjacency, weights, gamma, slope=0.2):
    x = features
    for index, w in enumerate(weights):
        x = adjacency @ (x @ w)
        if index < 2:
            x = torch.where(x > 0, x, slope * x)
    return gamma * x + (1 - gamma) * features


def plain_hspnet_logits(model, image_embeds):
    """Logits of an `HSPNetForImageClassification` computed from its tensors by the plain route.

    `image_embeds` are the projected (unnormalised) CLIP image features `(B, D)`.
    """
    base = model.hspnet
    config = model.config
    state = {k: v.detach() for k, v in base.clip.state_dict().items()}
    C = config.num_labels
    relation = base.relation.detach().double()
    label_adj = plain_process_relation(relation[:C, :C].tolist(), config.relation_keep_ratio, config.relation_reweight_p)
    group_adj = plain_process_relation(relation[C:, C:].tolist(), config.relation_keep_ratio, config.relation_reweight_p)
    weights = [base.gcn.gc1.weight.detach().double(), base.gcn.gc2.weight.detach().double(), base.gcn.gc3.weight.detach().double()]
    gamma = float(base.gcn.gamma.detach())

    group_features = plain_text_encoder(state, config.clip_config.text_config, base.group_prompt_embeds, base.group_eos_positions)
    group_features = plain_gcn(group_features, group_adj, weights, gamma, config.gcn_negative_slope)

    w1, b1 = base.meta_net.linear1.weight.detach().double(), base.meta_net.linear1.bias.detach().double()
    w2, b2 = base.meta_net.linear2.weight.detach().double(), base.meta_net.linear2.bias.detach().double()
    prompts = base.label_prompt_embeds.detach().double().clone()
    n_ctx, width = config.n_ctx, config.text_width
    for c in range(C):
        g = config.label_to_group[c]
        ctx = torch.relu(group_features[g] @ w1.T + b1) @ w2.T + b2
        prompts[c, 1 : 1 + n_ctx] = ctx.reshape(n_ctx, width)
    label_features = plain_text_encoder(state, config.clip_config.text_config, prompts, base.label_eos_positions)
    label_features = plain_gcn(label_features, label_adj, weights, gamma, config.gcn_negative_slope)

    labels = label_features / label_features.norm(dim=-1, keepdim=True)
    images = image_embeds.double() / image_embeds.double().norm(dim=-1, keepdim=True)
    return 10.0 * images @ labels.T
