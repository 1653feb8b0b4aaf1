"""The board's HTTP side: one FastAPI app whose routes call the same stage functions as `lorakit …` does.

The page (static/) is plain HTML and JavaScript: no build step, no front-end packages. Live views use
Server-Sent Events (training metrics) and the OpenAI-style streaming of `lorakit serve`, whose app is mounted
under /llm for the chat, so a chat here is the server's reply path, evidence included.
Every route needs the board's token (a cookie set from the printed URL, or ``Authorization: Bearer``).
A user's mistake comes back as ``{"error": <the CLI's one paragraph>, "field": …}`` with status 400.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from rich.console import Console

from lorakit.board.jobs import Jobs
from lorakit.board.runs import Runs, metric_rows
from lorakit.errors import LorakitError

STATIC = Path(__file__).with_name("static")
COOKIE = "lorakit_board"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".md")
SKIP_DIRS = {"runs", "evals", "node_modules", "__pycache__"}  # what the board writes is listed elsewhere


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def board_token(host: str, token: str | None) -> str:
    """The token the board asks for: a fresh random one per start on loopback; a password the user chose
    when the board listens beyond this machine."""
    if token is not None:
        if len(token) < 12:
            raise LorakitError("a board token must be at least 12 characters long", field="token")
        return token
    if host not in LOOPBACK and not host.startswith("127."):
        raise LorakitError(f"--host {host} makes the board reachable from other machines", field="host",
                           hint="Give it a password of at least 12 characters with --token (or the "
                                "LORAKIT_BOARD_TOKEN environment variable)")
    return secrets.token_urlsafe(18)


def quiet_console() -> Console:
    """Stage functions print progress to a console; the board shows its own, so theirs goes to a buffer."""
    return Console(file=io.StringIO(), width=160)


class Board:
    """What the routes share: the folder the board works in, its runs, the job worker, the loaded chat."""

    def __init__(self, root: Path, *, model: str):
        self.root = Path(root).resolve()
        self.model = model
        self.runs = Runs(self.root / "runs", self.root)
        self.jobs = Jobs()
        self.chat_app = None  # `lorakit serve`'s app over the chosen model, adapters and index
        self.chat_names: list[str] = []

    def inside(self, path: str | None, field: str, *, must_exist: bool = True) -> Path:
        """A path the page named, relative to the board's folder; nothing outside it is read or written."""
        if not path or not str(path).strip():
            raise LorakitError("no file chosen", field=field)
        p = Path(path)
        full = (p if p.is_absolute() else self.root / p).resolve()
        if full != self.root and self.root not in full.parents:
            raise LorakitError("the board reads and writes only inside its folder", file=path, field=field,
                               hint=f"Choose a path under {self.root}")
        if must_exist and not full.exists():
            raise LorakitError("not found", file=path, field=field)
        return full

    def model_ref(self, name: str | None) -> str:
        """A model the page named: a folder or .gguf relative to the board's folder, else as `lorakit` takes it
        (a preset name or a path)."""
        name = (name or "").strip() or self.model
        return str(self.root / name) if not Path(name).is_absolute() and (self.root / name).exists() else name

    def source(self, spec: str | None, field: str) -> tuple[Path, str | None]:
        """A data file the page named, and the dataset_info.json entry after '#' (``info.json#name``)."""
        path, _, entry = (spec or "").partition("#")
        return self.inside(path, field), entry or None

    def rel(self, path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if self.root in path.parents or path == self.root else str(path)

    def files(self) -> dict:
        """Data files, indexes and exports under the folder (four levels deep, hidden folders skipped)."""
        data, indexes, exports = [], [], []

        def walk(d: Path, depth: int):
            try:
                entries = sorted(d.iterdir())
            except OSError:
                return
            for p in entries:
                if p.name.startswith("."):
                    continue
                if p.is_dir():
                    if (p / "meta.json").exists() and (p / "chunks.jsonl").exists():
                        indexes.append(self.rel(p))
                    elif (p / "export.json").exists() and (p / "config.json").exists():
                        info = json.loads((p / "export.json").read_text(encoding="utf-8"))
                        ggufs = list((info.get("gguf") or {}).values())
                        exports.append({"path": self.rel(p), "adapter": info.get("adapter"),
                                        "max_logit_diff": info.get("max_logit_diff"), "ok": info.get("ok"),
                                        "gguf": ggufs[0] if ggufs else None})
                    elif depth < 4 and p.name not in SKIP_DIRS and not (p / "config.json").exists():
                        walk(p, depth + 1)
                elif p.name == "dataset_info.json":
                    data.extend(f"{self.rel(p)}#{name}" for name in registered(p))
                elif p.suffix.lower() in DATA_SUFFIXES and p.name not in ("meta.json", "summary.json"):
                    data.append(self.rel(p))

        walk(self.root, 0)
        return {"data": data, "indexes": indexes, "exports": exports}


def registered(info: Path) -> list[str]:
    """The datasets a LLaMA-Factory dataset_info.json registers (none when it cannot be read as one)."""
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    return [k for k, v in data.items() if isinstance(v, dict)] if isinstance(data, dict) else []


# ---------------------------------------------------------------------------------------------- request bodies
class CheckReq(BaseModel):
    file: str
    format: str | None = None
    eval_file: str | None = None
    model: str | None = None
    threshold: float = 0.8


class ConvertReq(BaseModel):
    file: str
    out: str
    to: str
    format: str | None = None


class SplitReq(BaseModel):
    file: str
    out_dir: str
    eval: str = "0.1"
    test: str = "0"
    seed: int = 0
    to: str = "messages"


class BuildReq(BaseModel):
    docs: list[str]
    out: str
    templates: int = 2
    system: str | None = None
    model: str | None = None  # a local model also writes Q/A pairs (progress is per batch of chunks)
    pairs: int = 3
    batch_size: int = 8
    max_new_tokens: int = 768


class TrainReq(BaseModel):
    config: dict


class EvalReq(BaseModel):
    model: str | None = None
    adapters: list[str] = []
    data: str
    index: str | None = None
    limit: int | None = None
    max_new_tokens: int = 64
    include_base: bool = True


class ChatLoadReq(BaseModel):
    model: str | None = None
    adapters: list[str] = []
    index: str | None = None
    k: int = 3


class ExportReq(BaseModel):
    run: str
    out: str
    gguf: bool = False


# ---------------------------------------------------------------------------------------------- the app
def build_board(root: str | Path, *, token: str, model: str = "qwen2.5-coder-0.5b-instruct") -> FastAPI:
    board = Board(Path(root), model=model)
    app = FastAPI(title="lorakit board", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.board = board

    # -------------------------------------------------------------------- token
    def authorised(request: Request) -> bool:
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        return secrets.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        path = request.url.path
        if path == "/health":
            return await call_next(request)
        url_token = request.query_params.get("token")
        if path == "/" and url_token is not None and secrets.compare_digest(url_token.encode(), token.encode()):
            resp = RedirectResponse("/", status_code=303)  # the token leaves the address bar and history
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return resp
        if not authorised(request):
            if path.startswith("/api") or path.startswith("/llm"):
                return JSONResponse({"error": "not signed in: open the address `lorakit board` printed "
                                              "(it carries the token)."}, status_code=401)
            return HTMLResponse("<!doctype html><meta charset=utf-8><title>lorakit board</title><p>Open the "
                                "address that <code>lorakit board</code> printed: it carries the token.</p>",
                                status_code=401)
        return await call_next(request)

    @app.exception_handler(LorakitError)
    async def user_error(request: Request, e: LorakitError):
        return JSONResponse({"error": e.render(), "field": e.field, "file": e.file, "line": e.line,
                             "fields": {e.field: e.render()} if e.field else {}}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        err = LorakitError(f"{first.get('msg', 'invalid request')}", field=where)
        return JSONResponse({"error": err.render(), "field": where}, status_code=400)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/files/{path:path}")
    def raw_file(path: str):
        """Reports, plots and data files of the folder, for the page to show (eval.html in a frame)."""
        full = board.inside(path, "path")
        if full.is_dir():
            raise LorakitError("a folder, not a file", file=path, field="path")
        return FileResponse(full)

    @app.get("/api/state")
    def state():
        return {"root": str(board.root), "model": board.model, **board.files(), "runs": board.runs.list(),
                "chat": board.chat_names}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        return board.jobs.get(job_id).view()

    # -------------------------------------------------------------------- data
    @app.post("/api/upload")
    async def upload(request: Request, name: str):
        """The raw body is the file; it lands in uploads/ whole or not at all."""
        from lorakit.io import atomic_path
        clean = Path(name).name
        if not clean or clean.startswith(".") or Path(clean).suffix.lower() not in DATA_SUFFIXES:
            raise LorakitError(f"'{name}' is not a data file name", field="file",
                               hint="Upload .jsonl, .json, .csv, .tsv, .txt or .md")
        target = board.root / "uploads" / clean
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
        return {"path": board.rel(target)}

    @app.post("/api/data/check")
    def data_check(req: CheckReq):
        from lorakit.data.check import check
        from lorakit.data.formats import messages_row
        from lorakit.data.report import histogram_png
        path, dataset = board.source(req.file, "file")
        tokenizer = None
        if req.model:
            from lorakit.models import load_tokenizer, resolve
            tokenizer = load_tokenizer(resolve(board.model_ref(req.model), console=quiet_console()))
        rep = check(path, fmt=req.format or None, tokenizer=tokenizer, model=req.model or None,
                    eval_path=board.inside(req.eval_file, "eval_file") if req.eval_file else None,
                    near_threshold=req.threshold, dataset=dataset)
        by_line = {r.source.get("line"): i for i, r in enumerate(rep.records)}
        records = {}
        for f in rep.findings:
            for i in (f.index, by_line.get((f.related or {}).get("line")) if f.related else None):
                if i is not None and i not in records:
                    records[i] = {"line": rep.records[i].source.get("line"), **messages_row(rep.records[i])}
        with tempfile.TemporaryDirectory() as d:
            png = histogram_png(rep, Path(d) / "lengths.png").read_bytes()
        out = rep.to_dict()
        out["file"] = req.file
        out["records"] = {str(k): v for k, v in records.items()}
        out["histogram"] = base64.b64encode(png).decode()
        return out

    @app.post("/api/data/convert")
    def data_convert(req: ConvertReq):
        from lorakit.data.formats import read_records, write_records
        path, dataset = board.source(req.file, "file")
        records = read_records(path, req.format or None, dataset=dataset)
        out = write_records(board.inside(req.out, "out", must_exist=False), records, req.to)
        return {"records": len(records), "out": board.rel(out), "to": req.to}

    @app.post("/api/data/split")
    def data_split(req: SplitReq):
        from lorakit.data.split import parse_share, split
        path, dataset = board.source(req.file, "file")
        res = split(path, board.inside(req.out_dir, "out_dir", must_exist=False), eval=parse_share(req.eval, "eval"),
                    test=parse_share(req.test, "test"), seed=req.seed, fmt=req.to, dataset=dataset)
        return {"paths": {k: board.rel(v) for k, v in res.paths.items()}, "sizes": res.sizes,
                "groups": res.groups, "largest_group": res.largest_group}

    @app.post("/api/data/build")
    def data_build(req: BuildReq):
        from lorakit.data.build import build
        docs = [board.inside(d, "docs") for d in req.docs]
        if not docs:
            raise LorakitError("no documents chosen", field="docs")
        out = board.inside(req.out, "out", must_exist=False)

        def work(progress):
            gen = None
            if req.model:
                from lorakit.data.build import local_generator
                progress(0, None, f"loading {req.model}")
                gen = local_generator(board.model_ref(req.model), max_new_tokens=req.max_new_tokens)
            res = build(docs, out, templates=req.templates, system=req.system or None, generate_fn=gen,
                        pairs=req.pairs, batch_size=req.batch_size,
                        on_progress=lambda done, total, label: progress(done, total, label))
            return {"out": board.rel(res.path), "records": res.records, "chunks": res.chunks,
                    "documents": res.documents, "template_records": res.template_records,
                    "model_records": res.model_records, "failed_chunks": len(res.failed_chunks),
                    "counts": {k: v for k, v in res.report.counts().items() if v}}
        return board.jobs.submit("build", work).view()

    # -------------------------------------------------------------------- train
    @app.get("/api/train/schema")
    def train_schema():
        from lorakit.config import TrainConfig
        return TrainConfig.model_json_schema()

    def validated(raw: dict):
        """The form's values as a TrainConfig (runs go to the board's runs/), or every field's error at once."""
        from lorakit.config import TrainConfig, validation_error
        raw = {k: v for k, v in raw.items() if v is not None and v != ""}
        raw["runs_dir"] = str(board.runs.dir)
        raw["model"] = board.model_ref(raw.get("model"))
        for key in ("data", "eval_data"):
            if raw.get(key):
                raw[key] = str(board.inside(raw[key], key))
        try:
            return TrainConfig.model_validate(raw)
        except ValidationError as e:
            err = validation_error(e, "the training form", TrainConfig)
            fields = {".".join(str(x) for x in er["loc"]): er["msg"] for er in e.errors()}
            raise FormError(err, fields) from None

    @app.post("/api/train/plan")
    def train_plan(req: TrainReq):
        """The dry run: tokens, the loss mask of the first examples, steps and doctor's memory/time estimate."""
        from lorakit.train.recipe import train
        cfg = validated(req.config)
        rec = Console(record=True, width=110, file=io.StringIO())
        try:
            res = train(cfg, dry_run=True, console=rec)
        except LorakitError as e:
            raise FormError(e, {e.field or ("data" if e.file and e.file == cfg.data else ""): e.render()}) from None
        return {"summary": res.summary, "html": rec.export_html(inline_styles=True, code_format="<pre>{code}</pre>")}

    @app.post("/api/train/start")
    def train_start(req: TrainReq):
        """Records are read and checked here, as the recipe does first, so a bad record is shown in the page
        before a process starts; what needs the model (tokens, mask) fails in the run's own log and state."""
        from lorakit.train.recipe import load_records
        cfg = validated(req.config)
        try:
            load_records(cfg)
        except LorakitError as e:
            raise FormError(e, {"data" if e.file and Path(e.file) == Path(cfg.data) else e.field or "": e.render()}
                            ) from None
        return {"name": board.runs.start(cfg)}

    @app.get("/api/runs")
    def runs():
        return board.runs.list()

    @app.post("/api/runs/{name}/stop")
    def run_stop(name: str):
        return board.runs.stop(name)

    @app.post("/api/runs/{name}/resume")
    def run_resume(name: str):
        return board.runs.resume(name)

    @app.get("/api/runs/{name}/events")
    async def run_events(name: str, request: Request):
        """Server-Sent Events: metrics.jsonl rows as the trainer appends them, and the run's state; a resumed
        run rewrites the file (steps after its checkpoint are dropped), which is sent as a reset."""
        board.runs.path(name)
        run = board.runs.dir / name

        async def events():
            offset, last, t_end = 0, None, time.time() + 6 * 3600  # bounded: a page left open for a day
            while time.time() < t_end and not await request.is_disconnected():
                size = (run / "metrics.jsonl").stat().st_size if (run / "metrics.jsonl").exists() else 0
                if size < offset:
                    offset = 0
                    yield "event: reset\ndata: {}\n\n"
                rows, offset = await asyncio.to_thread(metric_rows, run, offset)
                if rows:
                    yield f"event: metrics\ndata: {json.dumps(rows, ensure_ascii=False)}\n\n"
                st = await asyncio.to_thread(board.runs.status, name)
                view = json.dumps(st, ensure_ascii=False)
                if view != last:
                    last = view
                    yield f"event: status\ndata: {view}\n\n"
                await asyncio.sleep(0.5)
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -------------------------------------------------------------------- evaluate
    def adapter_paths(names: list[str]) -> list[Path]:
        return [board.runs.path(n) for n in names]

    @app.post("/api/eval")
    def evaluate(req: EvalReq):
        model = board.model_ref(req.model)
        data = board.inside(req.data, "data")
        adapters = adapter_paths(req.adapters)
        index_dir = board.inside(req.index, "index") if req.index else None
        if not adapters and not req.include_base:
            raise LorakitError("nothing to evaluate: choose the base model or an adapter", field="adapters")
        out = board.root / "evals" / time.strftime("eval-%Y%m%d-%H%M%S")

        def work(progress):
            progress(0, None, "loading the model")
            if index_dir is not None:
                from lorakit.rag.compare import rag_compare
                from lorakit.rag.index import load_index
                rc = rag_compare(load_index(index_dir), data, model=model, adapters=adapters, out_dir=out,
                                 limit=req.limit, max_new_tokens=req.max_new_tokens, console=quiet_console())
                systems = {s.name: s.summary for s in rc.comparison.systems}
            else:
                from lorakit.evaluate.compare import compare
                cmp = compare(model, adapters, data, out_dir=out, limit=req.limit, include_base=req.include_base,
                              max_new_tokens=req.max_new_tokens, console=quiet_console())
                systems = {s.name: s.summary for s in cmp.systems}
            return {"out": board.rel(out), "report": board.rel(out / "eval.html"), "systems": systems}
        return board.jobs.submit("eval", work).view()

    # -------------------------------------------------------------------- chat (lorakit serve, mounted)
    @app.post("/api/chat/load")
    def chat_load(req: ChatLoadReq):
        from lorakit.serve.server import Systems, build_app
        model = board.model_ref(req.model)
        adapters = {n: board.runs.path(n) for n in req.adapters}
        index_dir = board.inside(req.index, "index") if req.index else None

        def work(progress):
            progress(0, None, f"loading {model}")
            index = None
            if index_dir is not None:
                from lorakit.rag.index import load_index
                index = load_index(index_dir)
            systems = Systems(model, adapters, console=quiet_console(), index=index, k=req.k)
            board.chat_app, board.chat_names = build_app(systems), systems.names
            return {"systems": systems.names}
        return board.jobs.submit("chat", work).view()

    async def llm(scope, receive, send):
        if board.chat_app is None:
            resp = JSONResponse({"error": "no model loaded for chat yet: choose one and press Load"}, 400)
            return await resp(scope, receive, send)
        return await board.chat_app(scope, receive, send)

    app.mount("/llm", llm)

    # -------------------------------------------------------------------- export
    @app.post("/api/export")
    def export(req: ExportReq):
        from lorakit.serve.export import base_of, merge_and_export
        run = board.runs.path(req.run)
        out = board.inside(req.out, "out", must_exist=False)
        if out.exists() and any(out.iterdir()):
            raise LorakitError("the output folder exists and is not empty", file=req.out, field="out",
                               hint="Choose a new folder")

        def work(progress):
            progress(0, None, "merging")
            info = merge_and_export(base_of(run), run, out, gguf=["f16"] if req.gguf else [], parity=req.gguf,
                                    console=quiet_console())
            ggufs = list((info.get("gguf") or {}).values())
            return {**info, "merged": board.rel(Path(info["merged"])),
                    "gguf": board.rel(Path(ggufs[0])) if ggufs else None}
        return board.jobs.submit("export", work).view()

    @app.exception_handler(FormError)
    async def form_error(request: Request, e: FormError):
        return JSONResponse({"error": e.error.render(), "field": e.error.field, "fields": e.fields},
                            status_code=400)

    return app


class FormError(Exception):
    """A LorakitError plus the message for each form field it concerns (shown next to the field)."""

    def __init__(self, error: LorakitError, fields: dict[str, str]):
        super().__init__(error.render())
        self.error, self.fields = error, {k: v for k, v in fields.items() if k}
