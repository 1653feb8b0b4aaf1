"""An Ollama Modelfile beside the GGUF: FROM, the chat template as Ollama's Go TEMPLATE, PARAMETER stop.

Ollama does not run the Jinja chat template stored in a GGUF; it guesses a template of its own, which is how a
fine-tuned model ends up prompted in a format it was never trained on. So the template is derived here from the
tokenizer's own: each role's text before and after its content is read off renders of marker conversations, and
the result is accepted only if composing those pieces reproduces the Jinja render exactly on every conversation
of ``CHECKS``. A template that does not decompose this way (a system text folded into the first user turn, say)
gets no TEMPLATE line and the export says so, rather than a template that silently differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.io import atomic_path

S, U1, A1, U2 = "LKSYS7f3", "LKUSR7f3", "LKAST7f3", "LKUSR8e4"
CHECKS = [
    [{"role": "user", "content": "酒后驾驶怎么处罚？"}],
    [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": "What is a red light?"}],
    [{"role": "user", "content": "第一问"}, {"role": "assistant", "content": "第一答。"},
     {"role": "user", "content": "第二问"}],
    [{"role": "system", "content": "只用中文回答。"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@dataclass(frozen=True)
class Pieces:
    """Text around each role's content, plus the default system block and the generation prompt."""
    default: str  # emitted when there is no system message (Qwen's "You are Qwen…" block, or "")
    sys_pre: str
    sys_post: str
    user_pre: str
    user_post: str
    asst_pre: str
    asst_post: str
    gen: str

    def compose(self, messages: list[dict]) -> str:
        """What the Go template below renders for ``messages`` (ending with a user turn)."""
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        out = f"{self.sys_pre}{system}{self.sys_post}" if system else self.default
        rest = [m for m in messages if m["role"] != "system"]
        for i, m in enumerate(rest):
            last = i == len(rest) - 1
            if m["role"] == "user":
                out += f"{self.user_pre}{m['content']}{self.user_post}"
                if last:
                    out += self.gen
            else:
                out += self.asst_pre + m["content"] + ("" if last else self.asst_post)
        return out

    def go_template(self) -> str:
        """Ollama's TEMPLATE, without whitespace-trimming markers (the pieces' own newlines must survive)."""
        return ("{{ if .System }}" + self.sys_pre + "{{ .System }}" + self.sys_post + "{{ else }}" + self.default
                + "{{ end }}{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
                + '{{ if eq .Role "user" }}' + self.user_pre + "{{ .Content }}" + self.user_post
                + "{{ if $last }}" + self.gen + "{{ end }}"
                + '{{ else if eq .Role "assistant" }}' + self.asst_pre + "{{ .Content }}"
                + "{{ if not $last }}" + self.asst_post + "{{ end }}{{ end }}{{ end }}")


def _between(text: str, a: str, b: str) -> str:
    return text[text.index(a) + len(a):text.index(b)]


def derive_pieces(tokenizer) -> Pieces | None:
    """The template's pieces, or None when composing them does not reproduce the Jinja render exactly."""
    def render(msgs, gen=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    try:
        r_u = render([{"role": "user", "content": U1}])
        r_su = render([{"role": "system", "content": S}, {"role": "user", "content": U1}])
        r_ua = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1}])
        r_uau = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                        {"role": "user", "content": U2}])
        gen = render([{"role": "user", "content": U1}], gen=True)[len(r_u):]
        user_post = r_u[r_u.index(U1) + len(U1):]
        asst_post = r_ua[r_ua.index(A1) + len(A1):]
        u_to_a = _between(r_uau, U1, A1)
        a_to_u = _between(r_uau, A1, U2)  # asst_post + user_pre
        before_u = r_u[:r_u.index(U1)]  # default + user_pre
        if not a_to_u.startswith(asst_post):
            return None
        user_pre = a_to_u[len(asst_post):]
        n = len(user_pre)
        s_to_u = _between(r_su, S, U1)
        if not (u_to_a.startswith(user_post) and s_to_u.endswith(user_pre) and before_u.endswith(user_pre)):
            return None
        pieces = Pieces(default=before_u[:len(before_u) - n], sys_pre=r_su[:r_su.index(S)],
                        sys_post=s_to_u[:len(s_to_u) - n], user_pre=user_pre, user_post=user_post,
                        asst_pre=u_to_a[len(user_post):], asst_post=asst_post, gen=gen)
    except (ValueError, TypeError):  # a marker vanished (the template rewrites content) or the render failed
        return None
    if any("{{" in p or '"""' in p for p in vars(pieces).values()):
        return None
    if all(pieces.compose(m) == render(m, gen=True) for m in CHECKS):
        return pieces
    return None


def write_modelfile(folder: Path, gguf_name: str, tokenizer, stops: list[str], system: str | None = None, *,
                    shown_as: str | None = None) -> dict:
    """Write ``folder/Modelfile`` for ``gguf_name`` (a file in the same folder); return what export.json records.
    ``shown_as``: the folder's final name, when ``folder`` is a temporary one."""
    pieces = derive_pieces(tokenizer)
    lines = [f"# Written by lorakit export. Use: ollama create NAME -f {shown_as or Path(folder).name}/Modelfile",
             f"FROM ./{gguf_name}"]
    if pieces is not None:
        lines.append(f'TEMPLATE """{pieces.go_template()}"""')
    if system and '"""' not in system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    path = Path(folder) / "Modelfile"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": str(path), "from": gguf_name, "stop": stops, "system": bool(system),
            "template": "derived from the chat template; reproduces it on "
                        f"{len(CHECKS)} conversations" if pieces else
                        "not written: this chat template does not decompose into per-role pieces (Ollama will use "
                        "its own guess)"}


def read_modelfile(path: Path) -> dict:
    """Parse a Modelfile into {FROM, TEMPLATE, SYSTEM, PARAMETER: [(name, value)]} (what the tests check)."""
    text = Path(path).read_text(encoding="utf-8")
    out: dict = {"PARAMETER": []}
    i = 0
    while i < len(text):
        line_end = text.find("\n", i)
        line_end = len(text) if line_end < 0 else line_end
        line = text[i:line_end].strip()
        if not line or line.startswith("#"):
            i = line_end + 1
            continue
        word, _, rest = line.partition(" ")
        if rest.startswith('"""'):
            close = text.index('"""', text.index('"""', i) + 3)
            value = text[text.index('"""', i) + 3:close]
            line_end = text.find("\n", close)
            line_end = len(text) if line_end < 0 else line_end
        else:
            value = rest
        if word == "PARAMETER":
            name, _, v = value.partition(" ")
            out["PARAMETER"].append((name, v.strip().strip('"')))
        else:
            out[word] = value
        i = line_end + 1
    return out
