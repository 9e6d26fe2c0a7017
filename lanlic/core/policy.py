"""Seat policy: who may take a product's seats, how many, and which seats are kept for whom.

FlexNet's options file, RLM's options and the allow lists of the others, as one TOML file in the
server's data folder (``policy.toml``, README "Seat policy")::

    [groups.users]
    designers = ["alice", "bob"]

    [groups.hosts]
    lab = ["ws-01", "ws-02"]

    [products.cad]
    reserve = [{ seats = 2, group = "designers" }, { seats = 1, subnet = "10.1.0.0/16" }]
    max = [{ seats = 1, user = "carol" }]
    include = [{ group = "designers" }, { host_group = "lab" }]
    exclude = [{ user = "mallory" }]
    borrow_lowwater = 1
    max_borrowed_per_user = 1
    borrowable = 2
    max_borrow_days = 7

Pure like the rest of ``core``: the text comes in, a ``Policy`` (or a ``PolicyError`` naming the
line and the reason, nothing applied) comes out, and ``decide`` answers one request from who asks
and who holds the product's seats now.

Reservations, precisely: a product with seats S and reservations n_1..n_k has a general pool of
S - sum(n_i) seats and k reserved pools, pool i open to members of reservation i only. Holders are
not labelled with a pool: the current holders fit if they can be assigned to pools within their
capacities (a small flow problem over membership classes). A request is granted when adding the
asker lets one more holder fit. So after a policy change that the current holders do not fit
(nobody loses a seat), a non-member is refused until enough seats come back, while a member still
gets a reserved seat that nobody of the holders could be put in.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

__all__ = [
    "NO_POLICY",
    "Allow",
    "Asker",
    "Policy",
    "PolicyError",
    "ProductRules",
    "Refuse",
    "Rule",
    "Tally",
    "Who",
    "decide",
    "decide_borrow",
    "diff",
    "parse",
]

#: The kinds a rule may name, and what each matches.
WHO_KINDS = ("user", "group", "host", "host_group", "subnet")
#: MAX limits count seats of one user or of one user group.
MAX_KINDS = ("user", "group")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_PRODUCT_KEYS = (
    "reserve",
    "max",
    "include",
    "exclude",
    "borrow_lowwater",
    "max_borrowed_per_user",
    "borrowable",
    "max_borrow_days",
)


class PolicyError(ValueError):
    """A policy file that cannot be applied; ``line`` is 1-based (0 when not known)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


class Who(Protocol):
    """Anything that says who someone is: an ``Asker``, or a lease's ``Holder``."""

    @property
    def user(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def addr(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Asker:
    """Who asks for (or holds) a seat: user and host as the client declared them, the address as
    the server saw the connection ("" when unknown, e.g. a borrow loaded from the store)."""

    user: str
    host: str
    addr: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of a reserve or max list, or one entry of include/exclude (seats 0)."""

    kind: str
    name: str
    seats: int = 0

    def text(self) -> str:
        who = f"{self.kind.replace('_', ' ')} {self.name}"
        return f"{self.seats} for {who}" if self.seats else who


@dataclass(frozen=True, slots=True)
class ProductRules:
    reserve: tuple[Rule, ...] = ()
    """Seats kept for members: nobody else gets them; unused, they are free to members only."""
    max: tuple[Rule, ...] = ()
    """At most ``seats`` seats at once for this user, or for all users of this group together."""
    include: tuple[Rule, ...] = ()
    """If not empty, only those who match one of these may take a seat."""
    exclude: tuple[Rule, ...] = ()
    """Those who match one of these may not take a seat (wins over include)."""
    borrow_lowwater: int = 0
    """Seats that are never borrowable: a borrow is refused if it would leave fewer unborrowed."""
    max_borrowed_per_user: int | None = None
    """Borrowed seats of this product one user may have out at once."""
    borrowable: int | None = None
    """Lowers the network key's borrowable seats (never raises them)."""
    max_borrow_days: int | None = None
    """Lowers the network key's longest borrow (never raises it)."""

    @property
    def gates_seats(self) -> bool:
        """Whether a checkout must consult these rules (borrow-only rules do not)."""
        return bool(self.reserve or self.max or self.include or self.exclude)

    @property
    def counts_holders(self) -> bool:
        """Whether deciding needs this product's holders counted (``Tally``)."""
        return bool(self.reserve or self.max or self.max_borrowed_per_user is not None)


@dataclass(frozen=True, slots=True)
class Policy:
    user_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    host_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    products: Mapping[str, ProductRules] = field(default_factory=dict)
    text: str = ""
    """The TOML it was read from ("" for the empty policy)."""

    def seat_rules(self) -> dict[str, ProductRules]:
        """The products whose checkouts must consult the policy: the service keeps this dict, so
        a product without seat rules costs one failed lookup."""
        return {name: r for name, r in self.products.items() if r.gates_seats}

    def matches(self, rule: Rule, who: Who) -> bool:
        kind = rule.kind
        if kind == "user":
            return who.user == rule.name
        if kind == "group":
            return who.user in self.user_groups.get(rule.name, ())
        if kind == "host":
            return who.host.lower() == rule.name.lower()
        if kind == "host_group":
            return who.host.lower() in self.host_groups.get(rule.name, ())
        if kind == "subnet":
            return _in_subnet(who.addr, rule.name)
        return False  # pragma: no cover - parse admits only WHO_KINDS

    def borrow_terms(self) -> dict[str, tuple[int | None, int | None]]:
        """The lowering of borrowable seats and borrow days, as ``BorrowDesk.policy`` holds it."""
        return {
            name: (r.borrowable, r.max_borrow_days)
            for name, r in self.products.items()
            if r.borrowable is not None or r.max_borrow_days is not None
        }

    def lines(self) -> list[str]:
        """The policy as one line per fact, sorted (what ``diff`` compares and --show prints)."""
        out: list[str] = []
        for name, members in sorted(self.user_groups.items()):
            out.append(f"user group {name}: {', '.join(sorted(members))}")
        for name, members in sorted(self.host_groups.items()):
            out.append(f"host group {name}: {', '.join(sorted(members))}")
        for product, r in sorted(self.products.items()):
            out.extend(f"{product}: reserve {x.text()}" for x in r.reserve)
            out.extend(f"{product}: max {x.text()}" for x in r.max)
            out.extend(f"{product}: include {x.text()}" for x in r.include)
            out.extend(f"{product}: exclude {x.text()}" for x in r.exclude)
            for key in ("borrow_lowwater", "max_borrowed_per_user", "borrowable"):
                value = getattr(r, key)
                if value is not None and (key != "borrow_lowwater" or value):
                    out.append(f"{product}: {key} {value}")
            if r.max_borrow_days is not None:
                out.append(f"{product}: max_borrow_days {r.max_borrow_days}")
        return out

    def to_json(self) -> dict[str, Any]:
        def rules(xs: tuple[Rule, ...]) -> list[dict[str, Any]]:
            return [{x.kind: x.name, **({"seats": x.seats} if x.seats else {})} for x in xs]

        products: dict[str, Any] = {}
        for name, r in sorted(self.products.items()):
            products[name] = {
                "reserve": rules(r.reserve),
                "max": rules(r.max),
                "include": rules(r.include),
                "exclude": rules(r.exclude),
                "borrow_lowwater": r.borrow_lowwater,
                "max_borrowed_per_user": r.max_borrowed_per_user,
                "borrowable": r.borrowable,
                "max_borrow_days": r.max_borrow_days,
            }
        return {
            "groups": {
                "users": {k: sorted(v) for k, v in sorted(self.user_groups.items())},
                "hosts": {k: sorted(v) for k, v in sorted(self.host_groups.items())},
            },
            "products": products,
        }


NO_POLICY = Policy()


@functools.lru_cache(maxsize=4096)
def _in_subnet(addr: str, subnet: str) -> bool:
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version == net.version and ip in net


# ------------------------------------------------------------------------------ parsing


def diff(old: Policy, new: Policy) -> list[str]:
    """What ``new`` changes: ``- line`` for each fact it drops, ``+ line`` for each it adds."""
    before, after = old.lines(), new.lines()
    gone, added = set(before) - set(after), set(after) - set(before)
    return [f"- {x}" for x in before if x in gone] + [f"+ {x}" for x in after if x in added]


class _Lines:
    """Finds the line of a key in the TOML text, for error messages (tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.rows = text.splitlines()

    def table(self, *path: str) -> int:
        want = {".".join(path), ".".join(f'"{p}"' for p in path)}
        for i, row in enumerate(self.rows, 1):
            s = row.strip()
            if s.startswith("[") and s.strip("[] \t").split("#")[0].strip() in want:
                return i
        return 0

    def key(self, key: str, *table: str) -> int:
        start = self.table(*table) if table else 0
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(start, len(self.rows)):
            s = self.rows[i]
            if i > start and s.strip().startswith("[") and not pattern.match(s):
                if start:
                    break
            if pattern.match(s):
                return i + 1
        return start


def parse(text: str, products: Mapping[str, int] | None = None) -> Policy:
    """Read a policy file. ``products`` (name: seats of the network key), when given, is checked
    too: rules for products the key does not have, and reservations beyond the seats, are
    refused. Raises ``PolicyError`` naming the line and the reason."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = int(m.group(1)) if m else len(text.splitlines())  # "at end of document"
        raise PolicyError(line, f"not valid TOML: {exc}") from None
    where = _Lines(text)
    for key in doc:
        if key not in ("groups", "products"):
            raise PolicyError(
                where.key(key) or where.table(key),
                f"unknown key {key!r} (the file has [groups.users], [groups.hosts] and "
                "[products.NAME])",
            )
    groups = doc.get("groups", {})
    if not isinstance(groups, dict):
        raise PolicyError(where.key("groups"), "groups must be a table")
    for key in groups:
        if key not in ("users", "hosts"):
            raise PolicyError(
                where.table("groups", key) or where.table("groups"),
                f"unknown group kind {key!r} (users or hosts)",
            )
    user_groups = _groups(groups.get("users", {}), "users", where, lower=False)
    host_groups = _groups(groups.get("hosts", {}), "hosts", where, lower=True)
    table = doc.get("products", {})
    if not isinstance(table, dict):
        raise PolicyError(where.key("products"), "products must be a table of tables")
    rules: dict[str, ProductRules] = {}
    for name, body in table.items():
        line = where.table("products", name)
        if not isinstance(body, dict):
            raise PolicyError(line or where.key(name), f"products.{name} must be a table")
        if products is not None and name not in products:
            raise PolicyError(line, f"the network key has no product {name!r}")
        rules[name] = _product(name, body, where, user_groups, host_groups)
        if products is not None:
            reserved = sum(x.seats for x in rules[name].reserve)
            if reserved > products[name]:
                raise PolicyError(
                    where.key("reserve", "products", name),
                    f"{name}: {reserved} seats reserved, but the key has {products[name]}",
                )
            low = rules[name].borrow_lowwater
            if low > products[name]:
                raise PolicyError(
                    where.key("borrow_lowwater", "products", name),
                    f"{name}: borrow_lowwater {low} is more than the key's {products[name]} seats",
                )
    return Policy(
        MappingProxyType(user_groups),
        MappingProxyType(host_groups),
        MappingProxyType(rules),
        text,
    )


def _groups(raw: Any, kind: str, where: _Lines, lower: bool) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise PolicyError(where.table("groups", kind), f"groups.{kind} must be a table")
    out: dict[str, frozenset[str]] = {}
    for name, members in raw.items():
        line = where.key(name, "groups", kind)
        if not _NAME_RE.fullmatch(name):
            raise PolicyError(line, f"group name {name!r} is not a plain name")
        if not isinstance(members, list) or not all(isinstance(x, str) and x for x in members):
            raise PolicyError(line, f"groups.{kind}.{name} must be a list of names")
        out[name] = frozenset(x.lower() if lower else x for x in members)
    return out


def _int(value: Any, line: int, what: str, lo: int = 0) -> int:
    if type(value) is not int or value < lo:
        raise PolicyError(line, f"{what} must be a whole number >= {lo}, not {value!r}")
    return value


def _product(
    name: str,
    body: dict[str, Any],
    where: _Lines,
    user_groups: Mapping[str, frozenset[str]],
    host_groups: Mapping[str, frozenset[str]],
) -> ProductRules:
    def line(key: str) -> int:
        return where.key(key, "products", name)

    for key in body:
        if key not in _PRODUCT_KEYS:
            raise PolicyError(
                line(key),
                f"products.{name}: unknown key {key!r} (one of {', '.join(_PRODUCT_KEYS)})",
            )

    def rule_list(key: str, kinds: Sequence[str], seats: bool) -> tuple[Rule, ...]:
        raw = body.get(key, [])
        if not isinstance(raw, list):
            raise PolicyError(line(key), f"products.{name}.{key} must be a list of tables")
        out: list[Rule] = []
        for item in raw:
            if not isinstance(item, dict):
                raise PolicyError(line(key), f"products.{name}.{key}: {item!r} is not a table")
            whos = [k for k in item if k != "seats"]
            if len(whos) != 1 or whos[0] not in kinds:
                raise PolicyError(
                    line(key),
                    f"products.{name}.{key}: each entry names exactly one of "
                    f"{', '.join(kinds)}" + (" and its seats" if seats else ""),
                )
            kind = whos[0]
            who = item[kind]
            if not isinstance(who, str) or not who:
                raise PolicyError(line(key), f"products.{name}.{key}: {kind} must be a name")
            if kind == "group" and who not in user_groups:
                raise PolicyError(line(key), f"products.{name}.{key}: no user group {who!r}")
            if kind == "host_group" and who not in host_groups:
                raise PolicyError(line(key), f"products.{name}.{key}: no host group {who!r}")
            if kind == "subnet":
                try:
                    who = str(ipaddress.ip_network(who, strict=False))
                except ValueError:
                    raise PolicyError(
                        line(key), f"products.{name}.{key}: {who!r} is not a subnet"
                    ) from None
            if seats:
                if "seats" not in item:
                    raise PolicyError(line(key), f"products.{name}.{key}: seats missing")
                n = _int(item["seats"], line(key), f"products.{name}.{key} seats", 1)
            elif "seats" in item:
                raise PolicyError(line(key), f"products.{name}.{key}: seats has no meaning here")
            else:
                n = 0
            out.append(Rule(kind, who, n))
        if len(set((x.kind, x.name) for x in out)) != len(out):
            raise PolicyError(line(key), f"products.{name}.{key}: the same name twice")
        return tuple(out)

    def optional(key: str) -> int | None:
        if key not in body:
            return None
        return _int(body[key], line(key), f"products.{name}.{key}")

    return ProductRules(
        reserve=rule_list("reserve", WHO_KINDS, True),
        max=rule_list("max", MAX_KINDS, True),
        include=rule_list("include", WHO_KINDS, False),
        exclude=rule_list("exclude", WHO_KINDS, False),
        borrow_lowwater=optional("borrow_lowwater") or 0,
        max_borrowed_per_user=optional("max_borrowed_per_user"),
        borrowable=optional("borrowable"),
        max_borrow_days=optional("max_borrow_days"),
    )


# ------------------------------------------------------------------------------ deciding


@dataclass(frozen=True, slots=True)
class Allow:
    reserved: bool
    """True when only a reservation the asker belongs to made room (a non-member is refused)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    code: str
    """no_seat, limit_reached or not_allowed (a borrow also: no_borrowable_seat)."""
    message: str


def admitted(policy: Policy, rules: ProductRules, who: Asker) -> bool:
    """INCLUDE and EXCLUDE: whether ``who`` may take this product's seats at all."""
    if any(policy.matches(r, who) for r in rules.exclude):
        return False
    return not rules.include or any(policy.matches(r, who) for r in rules.include)


class Tally:
    """One product's holders, counted as its rules need them: how many there are, how many
    each MAX rule names, how many fall in each set of reservations (the flow's classes), and
    each user's borrowed seats.

    The pool keeps it up to date on every grant, release, expiry, borrow and return
    (``SeatPool.watch``): each change costs O(rules), and a decision reads the counts instead of
    walking the holders, so a checkout is O(rules) whatever the seats held. A new policy makes
    new tallies, counted once from the holders of the moment (``of``)."""

    __slots__ = ("_memo", "borrowed_by_user", "classes", "limits", "policy", "rules", "total")

    def __init__(self, policy: Policy, rules: ProductRules) -> None:
        self.policy = policy
        self.rules = rules
        self.total = 0
        """Seats held: leased and borrowed."""
        self.limits = [0] * len(rules.max)
        """Per ``rules.max`` entry: the seats held by those it names."""
        self.classes: Counter[int] = Counter()
        """Seats held per set of reservations the holder belongs to: bit i for
        ``rules.reserve[i]`` (``member_of``)."""
        self.borrowed_by_user: Counter[str] = Counter()
        self._memo: dict[tuple[str, str, str], tuple[tuple[int, ...], int]] = {}
        """Per (user, host, address): the MAX rules naming them and their reservations (the
        policy is fixed for a tally's life; cleared when it grows past ``MEMO_MAX``)."""

    @classmethod
    def of(
        cls,
        policy: Policy,
        rules: ProductRules,
        holders: Iterable[Who],
        borrowers: Iterable[Who] = (),
    ) -> Tally:
        """Count afresh: ``holders`` hold leases, ``borrowers`` borrowed seats."""
        tally = cls(policy, rules)
        for who in holders:
            tally.count(who, 1)
        for who in borrowers:
            tally.count(who, 1, borrowed=True)
        return tally

    def _profile(self, who: Who) -> tuple[tuple[int, ...], int]:
        key = (who.user, who.host, who.addr)
        found = self._memo.get(key)
        if found is None:
            policy = self.policy
            limits = tuple(i for i, r in enumerate(self.rules.max) if policy.matches(r, who))
            cls = 0
            for i, r in enumerate(self.rules.reserve):
                if policy.matches(r, who):
                    cls |= 1 << i
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            found = self._memo[key] = (limits, cls)
        return found

    def member_of(self, who: Who) -> int:
        """The reservations ``who`` belongs to, bit i for ``rules.reserve[i]``."""
        return self._profile(who)[1]

    def limits_of(self, who: Who) -> tuple[int, ...]:
        """The indexes of the ``rules.max`` entries that name ``who``."""
        return self._profile(who)[0]

    def count(self, who: Who, delta: int, borrowed: bool = False) -> None:
        """``who`` took (``delta`` 1) or gave back (-1) a seat, leased or ``borrowed``."""
        self.total += delta
        limits, cls = self._profile(who)
        for i in limits:
            self.limits[i] += delta
        if self.rules.reserve:
            n = self.classes[cls] + delta
            if n:
                self.classes[cls] = n
            else:
                del self.classes[cls]
        if borrowed:
            n = self.borrowed_by_user[who.user] + delta
            if n:
                self.borrowed_by_user[who.user] = n
            else:
                del self.borrowed_by_user[who.user]

    def counts(self) -> tuple[int, tuple[int, ...], dict[int, int], dict[str, int]]:
        """Everything counted, to compare with a recount."""
        return (
            self.total,
            tuple(self.limits),
            {k: v for k, v in self.classes.items() if v},
            {k: v for k, v in self.borrowed_by_user.items() if v},
        )


#: Identities a tally remembers the rules of (a few hundred bytes each).
MEMO_MAX = 4096


def decide(
    policy: Policy,
    product: str,
    rules: ProductRules,
    capacity: int,
    who: Asker,
    holders: Tally | Sequence[Who] | Counter[Asker],
) -> Allow | Refuse:
    """Whether ``who`` may take one more seat of ``product`` now. ``capacity`` is the seats
    that may be held (the key's, less any held out for a restart); ``holders`` is everyone who
    holds a seat of it now, leased or borrowed: counted (the server's way, O(rules)) or listed
    (counted here). Checked in the order: EXCLUDE/INCLUDE, MAX, free seats with the
    reservations."""
    if not admitted(policy, rules, who):
        return Refuse("not_allowed", f"{who.user}@{who.host} may not use {product} (policy)")
    tally = holders if isinstance(holders, Tally) else Tally.of(policy, rules, _each(holders))
    for i in tally.limits_of(who):
        count, limit = tally.limits[i], rules.max[i]
        if count >= limit.seats:
            return Refuse("limit_reached", f"{product}: {limit.text()} reached ({count} in use)")
    if tally.total >= capacity:
        return Refuse("no_seat", f"all {capacity} seats of {product} are in use")
    if not rules.reserve:
        return Allow(False)
    fits: _Hall | _Fit = (
        _Hall(rules, capacity, tally.classes)
        if len(rules.reserve) <= HALL_MAX_RESERVATIONS
        else _Fit(rules, capacity, tally.classes)
    )
    mine = tally.member_of(who)
    if fits.adds(mine):
        return Allow(reserved=not fits.adds(0))
    return Refuse(
        "no_seat",
        f"the free seats of {product} are reserved ("
        + ", ".join(r.text() for r in rules.reserve)
        + ")",
    )


def _each(holders: Sequence[Who] | Counter[Asker]) -> Iterable[Who]:
    if isinstance(holders, Counter):
        for who, n in holders.items():
            for _ in range(n):
                yield who
    else:
        yield from holders


def decide_borrow(
    policy: Policy,
    product: str,
    rules: ProductRules,
    capacity: int,
    who: Asker,
    holders: Tally | Sequence[Who] | Counter[Asker],
    borrowed: int,
    borrowed_by_user: int,
) -> Allow | Refuse:
    """A borrow is a seat taken for days: every checkout rule, and BORROW_LOWWATER and the
    per-user borrow limit. ``borrowed`` is the product's borrowed seats now, ``borrowed_by_user``
    those of ``who.user``."""
    if rules.max_borrowed_per_user is not None and borrowed_by_user >= rules.max_borrowed_per_user:
        return Refuse(
            "limit_reached",
            f"{product}: {who.user} has {borrowed_by_user} borrowed, the most a user may have "
            f"is {rules.max_borrowed_per_user}",
        )
    if rules.borrow_lowwater and borrowed + 1 > capacity - rules.borrow_lowwater:
        return Refuse(
            "no_borrowable_seat",
            f"{product}: {rules.borrow_lowwater} seats are kept unborrowable (borrow_lowwater)",
        )
    if rules.gates_seats:
        return decide(policy, product, rules, capacity, who, holders)
    return Allow(False)


#: Up to this many reservations on a product, whether the holders fit is found by Hall's
#: condition over every set of reservations (2**n cuts, each a pass over the classes: a few
#: microseconds); beyond, by a max flow (``_Fit``), whose cost does not double per reservation.
HALL_MAX_RESERVATIONS = 5


class _Hall:
    """``_Fit``'s answers from the cuts of the same graph, without running a flow.

    Every class of holders may sit in the general pool or in any reservation it belongs to. The
    most that fit is the smallest cut (max-flow min-cut): for a set R of reservations, the
    general pool's seats plus R's seats plus the holders whose classes are not within R (they
    need a pool outside it); and the cut that takes none of the pools, all the holders. One more
    holder of class C fits iff every cut whose R covers C was bigger than the smallest: the
    others all grow by one with it, and those that cover C do not."""

    def __init__(self, rules: ProductRules, capacity: int, classes: Counter[int]) -> None:
        caps = [r.seats for r in rules.reserve]
        general = max(0, capacity - sum(caps))
        held = [(cls, n) for cls, n in classes.items() if n]
        total = sum(n for _, n in held)
        seats = [general] * (1 << len(caps))
        for q in range(1, len(seats)):
            low = q & -q
            seats[q] = seats[q ^ low] + caps[low.bit_length() - 1]
        self.cuts = [seats[q] + sum(n for cls, n in held if cls & ~q) for q in range(len(seats))]
        self.base = min(total, *self.cuts)

    def adds(self, cls: int) -> bool:
        """Whether one more holder of membership ``cls`` lets one more holder fit."""
        base = self.base
        return all(cut > base for q, cut in enumerate(self.cuts) if not cls & ~q)


class _Fit:
    """The most holders that fit in the pools: max flow from membership classes to pools.

    Pools: 0 is the general pool (capacity minus everything reserved), i+1 is reservation i.
    Holders are grouped by the set of reservations they belong to, so the graph is small
    whatever the number of seats (the classes come counted: ``Tally.classes``, bit i for
    reservation i+1)."""

    def __init__(self, rules: ProductRules, capacity: int, classes: Counter[int]) -> None:
        reserved = sum(r.seats for r in rules.reserve)
        self.pools = [max(0, capacity - reserved)] + [r.seats for r in rules.reserve]
        self.classes = classes
        self.base = self._flow(classes)

    def adds(self, cls: int) -> bool:
        """Whether one more holder of membership ``cls`` lets one more holder fit."""
        classes = Counter(self.classes)
        classes[cls] += 1
        return self._flow(classes) > self.base

    def _flow(self, classes: Counter[int]) -> int:
        # Nodes: "s", ("c", cls), ("p", pool), "t". Capacities in a dict of dicts.
        cap: dict[Any, dict[Any, int]] = {"s": {}, "t": {}}
        for cls, n in classes.items():
            c = ("c", cls)
            cap["s"][c] = n
            cap.setdefault(c, {})["s"] = 0
            for pool in (0, *(i + 1 for i in range(cls.bit_length()) if cls >> i & 1)):
                p = ("p", pool)
                cap[c][p] = n
                cap.setdefault(p, {}).setdefault(c, 0)
        for pool, seats in enumerate(self.pools):
            p = ("p", pool)
            cap.setdefault(p, {})["t"] = seats
            cap["t"].setdefault(p, 0)
        total = 0
        while True:
            parent: dict[Any, Any] = {"s": None}
            frontier = ["s"]
            while frontier and "t" not in parent:
                nxt = []
                for u in frontier:
                    for v, left in cap[u].items():
                        if left > 0 and v not in parent:
                            parent[v] = u
                            nxt.append(v)
                frontier = nxt
            if "t" not in parent:
                return total
            path: list[tuple[Any, Any]] = []
            node: Any = "t"
            while parent[node] is not None:
                path.append((parent[node], node))
                node = parent[node]
            push = min(cap[u][v] for u, v in path)
            for u, v in path:
                cap[u][v] -= push
                cap[v][u] = cap[v].get(u, 0) + push
            total += push
