"""The built-in server as its users meet it: driven by the official `openai` client over real HTTP on 127.0.0.1
(uvicorn in a thread), with an API key, limits, concurrent batched requests and a bounded load test."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import openai
import pytest

KEY = "sk-lorakit-test"


def run_async(coro):
    """asyncio.run in a thread of its own: a test that ran before (Playwright's sync API) may have left an event
    loop set on the main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def systems(tiny_model, tmp_path_factory):
    from lorakit.config import TrainConfig
    from lorakit.quickstart import demo_file
    from lorakit.serve.server import Systems, parse_adapters
    from lorakit.train.recipe import train
    run = train(TrainConfig(model=str(tiny_model), data=str(demo_file("train.jsonl")), max_steps=2, precision="fp32",
                            runs_dir=str(tmp_path_factory.mktemp("openai_runs")), name="law", save_steps=1000,
                            batch_size=4, max_length=256)).run_dir
    return Systems(str(tiny_model), parse_adapters([f"law={run}"]))


@pytest.fixture(scope="module")
def served(systems, http_server):
    from lorakit.serve.server import Limits, build_app
    limits = Limits(api_key=KEY, max_prompt_tokens=200, max_tokens=64, default_max_tokens=8, max_queue=16,
                    max_batch=8, timeout_s=60)
    return http_server(build_app(systems, limits=limits))


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=60)


ASK = [{"role": "user", "content": "闯红灯会被扣几分？"}]


def test_models_chat_usage_and_streaming(client, systems, tiny_model):
    assert [m.id for m in client.models.list()] == [tiny_model.name, "law"]
    r = client.chat.completions.create(model="law", messages=ASK, max_tokens=6)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    # usage is exact: the prompt as the chat template renders it, and every token generated (≤ max_tokens)
    prompt = systems.tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(systems.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")

    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="law", messages=ASK, max_tokens=6, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces).strip() == text  # greedy: the stream says what the whole answer said
    assert usage.completion_tokens == r.usage.completion_tokens

    c = client.completions.create(model="law", prompt="酒后驾驶", max_tokens=4)
    assert c.object == "text_completion" and c.usage.completion_tokens <= 4 and isinstance(c.choices[0].text, str)


def test_stop_sequences_cut_the_answer(client):
    full = client.chat.completions.create(model="law", messages=ASK, max_tokens=12).choices[0].message.content
    assert len(full) >= 3, full
    stop = full[2]
    r = client.chat.completions.create(model="law", messages=ASK, max_tokens=12, stop=[stop])
    assert r.choices[0].message.content == full[:full.index(stop)].strip()
    assert r.choices[0].finish_reason == "stop"


def test_errors_come_back_as_openai_errors(client, served):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0).models.list()
    r = httpx.post(served.url + "/chat/completions", json={"model": "law", "messages": ASK})  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError, match="available"):
        client.chat.completions.create(model="nope", messages=ASK)
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.chat.completions.create(model="law", messages=ASK, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="prompt tokens"):  # tokenized, over the 200-token cap
        client.chat.completions.create(model="law", messages=[{"role": "user", "content": "酒驾罚款" * 150}])
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError, match="characters"):  # refused before tokenizing
        client.chat.completions.create(model="law", messages=[{"role": "user", "content": "x" * 200_000}])
    assert time.monotonic() - t0 < 5
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="law", messages=[])
    assert httpx.get(served.url.removesuffix("/v1") + "/health").json()["status"] == "ok"  # health needs no key


def test_concurrent_requests_are_batched_and_answer_as_alone(client, served):
    alone = [client.chat.completions.create(model="law", messages=[{"role": "user", "content": f"第{i}条讲什么？"}],
                                            max_tokens=5).choices[0].message.content for i in range(4)]
    before = served.server.config.app.state.scheduler.stats()["served"]

    async def together():
        aclient = openai.AsyncOpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=60)
        rs = await asyncio.gather(*[aclient.chat.completions.create(
            model="law", messages=[{"role": "user", "content": f"第{i}条讲什么？"}], max_tokens=5)
            for i in range(4)])
        await aclient.close()
        return [r.choices[0].message.content for r in rs]

    assert run_async(together()) == alone  # left-padded batch rows answer as they do alone
    assert served.server.config.app.state.scheduler.stats()["served"] == before + 4


def test_load_100_clients_answered_or_refused_with_429(served):
    """100 concurrent clients on loopback, bounded in count (100) and time (90 s): each gets 200 or 429."""
    async def load():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits, headers={"Authorization": f"Bearer {KEY}"}) as c:
            async def one(i):
                r = await c.post(served.url + "/chat/completions", json={
                    "model": "law", "messages": [{"role": "user", "content": f"问题{i}"}], "max_tokens": 4})
                return r.status_code, r.headers.get("retry-after"), r.json()
            return await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(100)]), 90)

    results = run_async(load())
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 16  # at least a full queue's worth was served
    for code, retry, body in results:
        if code == 429:
            assert int(retry) >= 1 and body["error"]["code"] == "queue_full"
        else:
            assert body["usage"]["completion_tokens"] <= 4
    health = httpx.get(served.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["queue"]["failed"] == 0 and health["queue"]["waiting"] == 0
