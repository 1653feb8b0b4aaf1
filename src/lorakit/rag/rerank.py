"""Pointwise reranking by the language model itself: no cross-encoder to download, the answering model judges.

Each (question, passage) pair becomes one chat prompt that asks whether the article answers the question with
a yes/no reply; the relevance score is the margin logit('是') − logit('否') (logit('yes'/'Yes') − logit('no'/'No')
for an English question, the two spellings pooled by log-sum-exp) at the first answer position. One forward
pass per batch; only the last position is read, and only the answer tokens' rows of the output layer are
applied, in fp32 (the full 152k-word logits of every position would be most of the cost, and bf16 logits tie:
see `LMReranker._answer_logits`; models without a separable decoder use ``logits_to_keep=1``). Prompts are
sorted by length so that a batch holds prompts of similar length, and left-padded with explicit position ids
so that a passage scores the same alone or in a batch.

`rerank` reorders a first stage's top candidates by that score, optionally fused with the first-stage order
(``keep_order_weight``, see its docstring).

Measured with the default 0.5B model (qwen2.5-coder-0.5b-instruct) on the 45 demo questions over the eight
traffic-law texts, BM25 top 20 reranked: recall@1/3/5 0.022/0.133/0.200 and MRR 0.138, against BM25's
0.333/0.489/0.533 and 0.440. The source article's mean LM rank among the 20 was 9.8 (chance: 10.5) and the
margin falls with passage length (Spearman −0.48): a model this small cannot judge relevance, and fusing its
order with BM25's only loses less (w = 0.75: MRR 0.358). Worth turning on only with a larger judge.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from lorakit.data.build import Chunk
    from lorakit.rag.index import Index

# The wording kept, of three tried on the default 0.5B model (BM25 top 10 of 15 of the 45 demo questions
# reranked; MRR with the LM order alone 0.226 against 0.204 and 0.138): a system message that names the task,
# the question before the article, and a "does answering need this article?" question. The other two asked
# "can this article answer the question above?" after the question, or put the article first.
ZH_SYSTEM = "你是交通法律检索助手，负责判断一条法律条文与用户的问题是否相关。"
ZH_PROMPT = "用户问题：{query}\n\n候选条文：\n{passage}\n\n回答这个问题需要用到这条条文吗？请只回答“是”或“否”。"
EN_SYSTEM = "You are a legal retrieval assistant who judges whether a statute article is relevant to a user's question."
EN_PROMPT = ("User question: {query}\n\nCandidate article:\n{passage}\n\n"
             "Is this article needed to answer the question? Answer only yes or no.")


def judge_passage(chunk: "Chunk", max_chars: int = 300) -> str:
    """What the judge is shown of a chunk: its document title, then its text (label included) cut to
    ``max_chars`` characters, so 20 candidates cost about 20 × 250 tokens rather than whole long articles."""
    text = chunk.text
    if max_chars and len(text) > max_chars:
        text = text[:max_chars].rstrip() + "……"
    return f"{chunk.document}\n{text}"


def judge_messages(query: str, passage: str, *, zh=(ZH_PROMPT, ZH_SYSTEM), en=(EN_PROMPT, EN_SYSTEM)) -> list[dict]:
    """The yes/no question as chat messages: one layout for scoring (`LMReranker`) and for training the judge
    (`judge_records`)."""
    from lorakit.rag.answer import is_chinese
    template, system = zh if is_chinese(query) else en
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": template.format(query=query.strip(), passage=passage)})
    return msgs


def judge_records(index: "Index", records: Sequence, rankings: Sequence, *, negatives: int = 5, hard: int = 3,
                  seed: int = 0, max_chars: int = 300) -> list[dict]:
    """Training records that teach the answering model to be its own reranker (`LMReranker` reads its answer).

    For each record whose ``source`` names an indexed article: the question with that article answered 是
    (yes), and with ``negatives`` other articles answered 否 (no): the ``hard`` articles the first stage
    ranks highest that are not the source (the ones the judge must tell apart at answer time), then the rest
    drawn from ranks ``hard``..20. ``rankings``: the first stage's (chunk id, score, ranks) lists per record,
    computed without what the index learned from these same records, so the negatives are the ones a new
    question meets. The base 0.5B model judges at chance (module docstring); these records are what lets a
    fine-tuned adapter rerank."""
    import random

    from lorakit.rag.answer import is_chinese
    from lorakit.rag.ingest import source_chunks
    if negatives < 1:
        return []
    rng = random.Random(seed)
    out: list[dict] = []
    for r, ranked in zip(records, rankings):
        gold = source_chunks(r.source, index.chunks)[0]
        if not gold:
            continue
        others = [i for i, _, _ in ranked if i not in gold]
        pool = others[hard:20]
        negs = others[:min(hard, negatives)] + rng.sample(pool, min(max(negatives - hard, 0), len(pool)))
        yes, no = ("是", "否") if is_chinese(r.prompt) else ("yes", "no")
        for cid, answer in [(gold[0], yes)] + [(n, no) for n in negs]:
            msgs = judge_messages(r.prompt, judge_passage(index.chunks[cid], max_chars))
            out.append({"messages": msgs + [{"role": "assistant", "content": answer}], "source": r.source,
                        "judge": {"passage": f"《{index.chunks[cid].document}》{index.chunks[cid].article}",
                                  "relevant": answer == yes}})
    return out


def _first_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Token id of the first token of each word (the token the model must emit first), without repeats."""
    out: list[int] = []
    for w in words:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if ids and ids[0] not in out:
            out.append(ids[0])
    return out


class LMReranker:
    """A loaded causal LM used as a yes/no relevance judge of (question, passage) pairs."""

    zh_prompt, zh_system = ZH_PROMPT, ZH_SYSTEM  # instance attributes may replace them (prompt trials)
    en_prompt, en_system = EN_PROMPT, EN_SYSTEM

    def __init__(self, model, tokenizer, precision=None, *, batch_size: int = 8, max_chars: int = 300):
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.max_chars = max_chars
        # Chinese question → 是/否; English → yes/Yes against no/No (the model starts a reply with either case).
        self.zh_ids = (_first_ids(tokenizer, ["是"]), _first_ids(tokenizer, ["否"]))
        self.en_ids = (_first_ids(tokenizer, ["yes", "Yes"]), _first_ids(tokenizer, ["no", "No"]))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def passage(self, chunk: "Chunk") -> str:
        return judge_passage(chunk, self.max_chars)

    def messages(self, query: str, passage: str) -> list[dict]:
        return judge_messages(query, passage, zh=(self.zh_prompt, self.zh_system), en=(self.en_prompt, self.en_system))

    def prompt(self, query: str, passage: str) -> str:
        """The chat-template text whose next token is the yes/no answer."""
        return self.tokenizer.apply_chat_template(self.messages(query, passage), add_generation_prompt=True,
                                                  tokenize=False)

    def scores(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to the query: logit('是') − logit('否') (Chinese query) or 'yes'/'no'
        (English) at the first answer position of a yes/no prompt 'is this article needed to answer the question?'.
        Texts are shown as given (`passage` builds them from chunks); higher is more relevant."""
        import torch

        from lorakit.rag.answer import is_chinese
        out = np.zeros(len(texts), dtype=np.float32)
        if not len(texts):
            return out
        pos, neg = self.zh_ids if is_chinese(query) else self.en_ids
        if not pos or not neg or set(pos) & set(neg):
            from lorakit.errors import LorakitError
            raise LorakitError("this tokenizer gives the yes and no answers the same first token, so the model's "
                               "answer cannot be read from one position", field="rerank",
                               hint="Rerank with another model, or turn reranking off")
        rows = [self.tokenizer(self.prompt(query, t), add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.tensor([[self.pad_id] * (width - len(rows[i])) + rows[i] for i in idx], device=device)
            att = torch.tensor([[0] * (width - len(rows[i])) + [1] * len(rows[i]) for i in idx], device=device)
            # Positions count real tokens only: a left-padded prompt sees the same positions as when alone.
            position_ids = (att.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self._answer_logits(ids, att, position_ids, pos + neg)
            margin = torch.logsumexp(logits[:, :len(pos)], -1) - torch.logsumexp(logits[:, len(pos):], -1)
            out[idx] = margin.cpu().numpy()
        return out

    def _answer_logits(self, ids, att, position_ids, token_ids: list[int]):
        """fp32 logits of ``token_ids`` at the last position, from one forward pass of the batch.

        The decoder runs once and only the answer tokens' rows of the output layer are applied, in fp32: with
        bf16 weights (what `pick_precision` picks on a CPU with fast bf16) full logits come out in bf16, whose
        step near a logit of 15 is 0.06, and the 是/否 margins of 20 passages fell on 4 distinct values (ties,
        not a ranking). Models without a separable decoder fall back to ``logits_to_keep=1``.
        """
        import torch

        from lorakit.evaluate.generate import autocast_ctx, decoder_and_head
        decoder, head = decoder_and_head(self.model)
        if decoder is None:
            with autocast_ctx(self.model, self.precision):
                logits = self.model(input_ids=ids, attention_mask=att, position_ids=position_ids,
                                    logits_to_keep=1).logits[:, -1].float()
            return logits[:, token_ids]
        with autocast_ctx(self.model, self.precision):
            h = decoder(input_ids=ids, attention_mask=att, position_ids=position_ids,
                        use_cache=False).last_hidden_state[:, -1]
        h = h.float()  # outside autocast: the answer rows are applied in fp32
        rows = torch.as_tensor(token_ids, device=h.device)
        logits = h @ head.weight[rows].float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[rows].float()
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        if cap:  # Gemma 2/3 squash logits; the margin must be read on the same scale as generation
            logits = torch.tanh(logits / cap) * cap
        return logits


def rerank(index: "Index", query: str, candidates: Sequence[int], reranker: LMReranker, *,
           keep_order_weight: float = 0.0) -> list[int]:
    """candidate chunk ids reordered by reranker score (optionally fused with the first-stage rank).

    Rule: each candidate gets the key (1 − w) · rank_by_LM + w · rank_in_candidates (both 1-based), w =
    ``keep_order_weight`` in [0, 1]; smaller keys first, ties keep the first-stage order. w = 0 (the default:
    what reranking means) orders by the LM alone, w = 1 keeps the first-stage order, w = 0.5 averages the two
    ranks (a passage both like wins). Ranks rather than raw scores, because BM25 scores, cosines and logit
    margins have unrelated scales.
    """
    ids = [int(i) for i in candidates]
    if len(ids) < 2:
        return ids
    w = min(max(float(keep_order_weight), 0.0), 1.0)
    s = reranker.scores(query, [reranker.passage(index.chunks[i]) for i in ids])
    by_lm = np.argsort(-s, kind="stable")  # ties keep the first-stage order
    lm_rank = np.empty(len(ids), dtype=np.float64)
    lm_rank[by_lm] = np.arange(1, len(ids) + 1)
    key = (1 - w) * lm_rank + w * np.arange(1, len(ids) + 1)
    return [ids[p] for p in np.argsort(key, kind="stable")]
