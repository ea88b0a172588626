"""A plain re-implementation of the HSPNet authors' model and of OpenAI's CLIP, for the tests only.

Written from the method (docs/method.md, sections 1 and 2) and the layout of the authors' `model.py` (module and
parameter NAMES are the official ones, so `state_dict()` has exactly the keys and shapes of a released checkpoint or
of an OpenAI CLIP file). It shares no code with `hspnet`: the ResNet, its attention pool (full self-attention written
out, keeping the first token), the causal text transformer (`nn.MultiheadAttention`), the prompt learners, the GCN and
the relation split are written here again. Prompts are tokenized by a toy OpenAI-style tokenizer (SOS = vocab - 2,
EOS = vocab - 1 = the largest id, padding = 0) and the EOS feature is taken at `argmax` of the ids, as officially.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------------------------
# toy OpenAI-style tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def toy_tokenize(text: str, vocab_size: int, length: int = 77) -> torch.Tensor:
    """One token per character of each word ('.' is a word of its own), ids in 1..vocab-3; SOS/EOS/0-padding."""
    ids = [vocab_size - 2]
    for word in text.replace(".", " . ").split():
        ids.extend(1 + (ord(ch) * 7 + 3) % (vocab_size - 3) for ch in word.lower())
    ids.append(vocab_size - 1)
    assert len(ids) <= length, text
    return torch.tensor(ids + [0] * (length - len(ids)))


# ----------------------------------------------------------------------------------------------------------------------
# OpenAI CLIP (ResNet or ViT image tower), official parameter names
# ----------------------------------------------------------------------------------------------------------------------


class RefBottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.stride = stride
        if stride != 1 or cin != 4 * planes:
            self.downsample = nn.Sequential(
                OrderedDict([("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(cin, 4 * planes, 1, bias=False)),
                             ("1", nn.BatchNorm2d(4 * planes))])
            )
        else:
            self.downsample = None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        if self.stride > 1:
            y = nn.functional.avg_pool2d(y, self.stride)
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class RefAttnPool(nn.Module):
    def __init__(self, grid, dim, heads, out_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x):  # full self-attention over [mean] + positions, one image and one head at a time
        outputs = []
        for image in x:
            tokens = image.flatten(1).T  # (hw, C)
            tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + self.positional_embedding
            q, k, v = self.q_proj(tokens), self.k_proj(tokens), self.v_proj(tokens)
            d = tokens.shape[1] // self.heads
            heads = []
            for h in range(self.heads):
                sl = slice(h * d, (h + 1) * d)
                weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1)
                heads.append(weights @ v[:, sl])
            outputs.append(self.c_proj(torch.cat(heads, dim=1))[0])
        return torch.stack(outputs)


class RefResNet(nn.Module):
    def __init__(self, layers, width, heads, image_size, out_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        cin = width
        for stage, blocks in enumerate(layers):
            planes = width * 2**stage
            seq = []
            for b in range(blocks):
                seq.append(RefBottleneck(cin, planes, 2 if (stage > 0 and b == 0) else 1))
                cin = 4 * planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*seq))
        self.attnpool = RefAttnPool(image_size // 32, cin, heads, out_dim)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        x = nn.functional.avg_pool2d(x, 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask=None):  # x: (L, N, W)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[RefBlock(width, heads) for _ in range(layers)])

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class RefViT(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, out_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((image_size // patch) ** 2 + 1, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = RefTransformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out_dim) * width**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


def causal_mask(length):
    return torch.full((length, length), float("-inf")).triu(1)


class RefCLIP(nn.Module):
    """OpenAI's CLIP layout: `visual.*`, `transformer.*`, `token_embedding`, `positional_embedding`, `ln_final`,
    `text_projection`, `logit_scale`."""

    def __init__(self, embed_dim=16, vision="resnet", resnet_layers=(1, 2, 1, 1), resnet_width=8, image_size=64,
                 vit_width=32, vit_layers=2, vit_patch=16, vocab_size=64, context=77, text_width=128, text_layers=2):
        super().__init__()
        if vision == "resnet":
            self.visual = RefResNet(list(resnet_layers), resnet_width, 32 * resnet_width // 64, image_size, embed_dim)
        else:
            self.visual = RefViT(image_size, vit_patch, vit_width, vit_layers, max(1, vit_width // 64), embed_dim)
        self.transformer = RefTransformer(text_width, text_layers, max(1, text_width // 64))
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.01)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x):  # only so that torch.jit.trace can record a graph: touches one parameter
        return x * self.logit_scale

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.transformer(x.transpose(0, 1), causal_mask(ids.shape[1])).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ self.text_projection


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere: batch-norm statistics and affine terms, layer norms, biases."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.LayerNorm):
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.MultiheadAttention):
            m.in_proj_bias.copy_(0.1 * torch.randn(m.in_proj_bias.shape, generator=g))
            m.out_proj.bias.copy_(0.1 * torch.randn(m.out_proj.bias.shape, generator=g))
    return module


# ----------------------------------------------------------------------------------------------------------------------
# The authors' HSPNet module layout on top of RefCLIP
# ----------------------------------------------------------------------------------------------------------------------


class RefTextEncoder(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection

    def forward(self, prompts, ids):
        x = prompts + self.positional_embedding
        x = self.transformer(x.transpose(0, 1), causal_mask(prompts.shape[1])).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


class RefParentPrompts(nn.Module):
    def __init__(self, groups, clip, n_ctx, vocab_size):
        super().__init__()
        table = clip.token_embedding
        init_ids = toy_tokenize("a photo of a", vocab_size)
        self.ctx = nn.Parameter(table(init_ids)[1 : 1 + n_ctx].detach().clone())
        self.ids = torch.stack([toy_tokenize(f"a photo of a {g.replace('_', ' ')}.", vocab_size) for g in groups])
        with torch.no_grad():
            embedding = table(self.ids)
        self.register_buffer("token_prefix", embedding[:, :1].clone())
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())
        self.register_buffer("token_middle", embedding[:, 1 : 1 + n_ctx].clone())
        self.register_buffer("embedding", embedding.clone())


class RefChildPrompts(nn.Module):
    def __init__(self, labels, clip, n_ctx, embed_dim, vocab_size):
        super().__init__()
        width = clip.ln_final.weight.shape[0]
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(embed_dim, n_ctx * width)),
                                                   ("relu", nn.ReLU()),
                                                   ("linear2", nn.Linear(n_ctx * width, n_ctx * width))]))
        self.ids = torch.stack([toy_tokenize("X " * n_ctx + name.replace("_", " ") + ".", vocab_size)
                                for name in labels])
        with torch.no_grad():
            embedding = clip.token_embedding(self.ids)
        self.register_buffer("token_prefix", embedding[:, :1].clone())
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())
        self.n_ctx, self.width = n_ctx, width


class RefGraphConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout).uniform_(-1 / math.sqrt(cout), 1 / math.sqrt(cout)))


class RefGCN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gc1 = RefGraphConv(dim, hidden)
        self.gc2 = RefGraphConv(hidden, hidden)
        self.gc3 = RefGraphConv(hidden, dim)
        self.gamma = nn.Parameter(torch.tensor([0.9]))

    def forward(self, x, adj):
        h = adj @ (x @ self.gc1.weight)
        h = torch.where(h > 0, h, 0.2 * h)
        h = adj @ (h @ self.gc2.weight)
        h = torch.where(h > 0, h, 0.2 * h)
        h = adj @ (h @ self.gc3.weight)
        return self.gamma * h + (1 - self.gamma) * x


def ref_split(block, keep_ratio=0.75, p=0.2):
    """Relation block -> adjacency, by loops: top int(keep_ratio * n) per row, zero diagonal, rows rescaled to p,
    diagonal 1 - p."""
    n = block.shape[0]
    k = int(keep_ratio * n)
    out = torch.zeros_like(block)
    for i in range(n):
        kept = torch.topk(block[i], k).indices.tolist()
        total = sum(float(block[i, j]) for j in kept if j != i)
        for j in kept:
            if j != i:
                out[i, j] = block[i, j] / total * p
        out[i, i] = 1 - p
    return out


class RefHSPNet(nn.Module):
    """The authors' HSPNet module: same attribute names, so `state_dict()` is a synthetic official checkpoint."""

    def __init__(self, clip, labels, groups, label_to_group, relation, n_ctx=4, gcn_hidden=None, vocab_size=64):
        super().__init__()
        dim = clip.text_projection.shape[1]
        self.parent_prompt_learner = RefParentPrompts(groups, clip, n_ctx, vocab_size)
        self.child_prompt_learner = RefChildPrompts(labels, clip, n_ctx, dim, vocab_size)
        self.image_encoder = clip.visual
        self.text_encoder = RefTextEncoder(clip)
        self.logit_scale = clip.logit_scale
        self.gcn = RefGCN(dim, gcn_hidden or 2 * dim)
        C = len(labels)
        if relation is not None:  # None: layout only (e.g. built on the meta device)
            relation = torch.as_tensor(relation, dtype=torch.float32)
            self.label_adj = ref_split(relation[:C, :C].clone())
            self.group_adj = ref_split(relation[C:, C:].clone())
        self.label_to_group = torch.tensor(label_to_group)

    def forward(self, image):
        img = self.image_encoder(image)
        img = img / img.norm(dim=-1, keepdim=True)
        parent = self.text_encoder(self.parent_prompt_learner.embedding, self.parent_prompt_learner.ids)
        parent = self.gcn(parent, self.group_adj)
        child = self.child_prompt_learner
        ctx = child.meta_net(parent)[self.label_to_group].reshape(-1, child.n_ctx, child.width)
        prompts = torch.cat([child.token_prefix, ctx, child.token_suffix], dim=1)
        text = self.gcn(self.text_encoder(prompts, child.ids), self.label_adj)
        text = text / text.norm(dim=-1, keepdim=True)
        return 10 * img @ text.T


def random_relation(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rel = 0.6 + 0.4 * torch.rand(n, n, generator=g)
    rel = (rel + rel.T) / 2
    rel.fill_diagonal_(1.0)
    return rel


def build_official(labels, groups, label_to_group, seed=0, **clip_kwargs):
    """A randomly initialised (clip, hspnet, relation) triple with official layouts."""
    torch.manual_seed(seed)
    vocab = clip_kwargs.get("vocab_size", 64)
    clip = randomize(RefCLIP(**clip_kwargs), seed)
    relation = random_relation(len(labels) + len(groups), seed)
    model = RefHSPNet(clip, labels, groups, label_to_group, relation, vocab_size=vocab)
    with torch.no_grad():
        model.gcn.gamma.fill_(0.7)
        for p in model.child_prompt_learner.meta_net.parameters():
            p.mul_(3.0)
    return clip.eval(), model.eval(), relation
