"""Statements of the hot paths, compiled once per dialect and run on the driver's cursor.

``conn.execute(stmt, params)`` costs SQLAlchemy far more than the database: on SQLite a
one-row select by primary key takes about 3 µs in the driver and 35 µs through
``Connection.execute`` (the statement's cache key, an execution context, parameter and
result processing).  A submit and a node run each execute a few dozen statements that
never change, so those are declared once as :func:`prebuilt` statements::

    RUN_BY_ID = prebuilt(sa.select(node_runs).where(node_runs.c.id == sa.bindparam("id")))
    row = conn.execute(RUN_BY_ID, {"id": run_id}).first()

They are still executed with ``conn.execute`` on a connection of the transaction they
belong to.  For each engine's dialect, set of parameter names and lengths of the lists
bound to ``IN``, the statement is compiled once (as SQLAlchemy would compile it), with the
types' own bind and result processors, and executed on the connection's DBAPI cursor;
errors are raised as SQLAlchemy's (``OperationalError``, ``IntegrityError`` …), and a
transaction begins as SQLAlchemy's autobegin would begin it.

A statement whose execution needs SQLAlchemy's machinery runs through it unchanged:
Python-side column defaults that are not constants, duplicate result keys, execution
options, ``IN`` lists of more lengths than :data:`_MAX_FORMS` forms hold, and every
execution while a ``before_cursor_execute``/``after_cursor_execute`` listener is attached
(statement counters, tracing instrumentation) or SQL echo is on, so what such a listener
sees is what is executed.
"""

from __future__ import annotations

from collections import namedtuple
from keyword import iskeyword
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_REQUIRED = object()
#: compiled forms kept per statement and dialect (one per parameter names and IN list lengths)
_MAX_FORMS = 256


def _kept_by(dialect: Any) -> dict:
    """What ``dialect`` keeps of the prebuilt statements run on it: for each, its compiled statements
    by parameter names and its forms by parameter names and the lengths of the lists bound to
    ``IN`` (None where the statement needs SQLAlchemy).

    A dialect is an engine's (its driver and options choose the processors), and what is compiled
    for it refers to it, so it keeps them itself: they go when the engine goes.  (Kept beside
    the statement, in a dictionary weakly keyed by the dialect, they kept it alive for good.)"""
    try:
        return dialect._pixelmill_prebuilt
    except AttributeError:
        kept = dialect._pixelmill_prebuilt = {}
        return kept


class Prebuilt:
    """A statement built once: see the module's documentation.  Any other attribute is the
    wrapped statement's (``PREBUILT.where(...)`` builds an ordinary statement)."""

    __slots__ = ("statement", "_expanding")

    def __init__(self, statement: Any):
        self.statement = statement
        #: the parameters bound to ``IN (…)`` lists (known once compiled)
        self._expanding: tuple[str, ...] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.statement, name)

    def __repr__(self) -> str:
        return f"prebuilt({self.statement!r})"

    def _execute_on_connection(self, conn: Connection, distilled_params: list, execution_options: Any) -> Any:
        dispatch = conn.dispatch
        if execution_options or getattr(conn, "_echo", True) or dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            return self.statement._execute_on_connection(conn, distilled_params, execution_options)
        dialect = conn.dialect
        first = distilled_params[0] if distilled_params else {}
        names = frozenset(first)
        try:
            compiled, forms = dialect._pixelmill_prebuilt[self]
        except (AttributeError, KeyError):
            compiled, forms = _kept_by(dialect).setdefault(self, ({}, {}))
        expanding = self._expanding
        if expanding is None:
            self._compile(compiled, dialect, names)
            expanding = self._expanding
        try:
            key = (names, tuple(len(first[k]) for k in expanding)) if expanding else names
        except (KeyError, TypeError):  # a missing or unsized IN list: SQLAlchemy's error
            return self.statement._execute_on_connection(conn, distilled_params, execution_options)
        try:
            form = forms[key]
        except KeyError:
            form = _Form.build(self._compile(compiled, dialect, names), dialect, first, expanding)
            if len(forms) < _MAX_FORMS:  # IN lists of many lengths: the rest run through SQLAlchemy
                forms[key] = form
            else:
                form = None
        if form is None or (expanding and len(distilled_params) > 1):
            return self.statement._execute_on_connection(conn, distilled_params, execution_options)
        return form.execute(conn, distilled_params)

    def _compile(self, compiled: dict, dialect: Any, names: frozenset) -> Any:
        statement = compiled.get(names)
        if statement is None:
            statement = compiled[names] = self.statement.compile(dialect=dialect, column_keys=sorted(names))
            if self._expanding is None:
                self._expanding = tuple(sorted(bp.key for bp in statement.bind_names if bp.expanding and bp.value is None))
        return statement


def driver_sql(conn: Connection, sql: str) -> None:
    """``conn.exec_driver_sql(sql)`` for a statement without parameters or rows (``BEGIN``), run on the
    driver's cursor unless a listener or echo wants SQLAlchemy's path."""
    dispatch = conn.dispatch
    if getattr(conn, "_echo", True) or dispatch.before_cursor_execute or dispatch.after_cursor_execute:
        conn.exec_driver_sql(sql)
        return
    fairy = conn.connection
    cursor = fairy.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as e:
        _raise(conn, e, fairy, cursor, sql, [], False)
    _close(cursor)


def _raise(conn: Connection, e: Exception, fairy: Any, cursor: Any, sql: str, params: list, many: bool) -> None:
    """``e``, a driver's error, raised as SQLAlchemy raises it (and the connection invalidated where it was lost)."""
    dialect = conn.dialect
    invalidated = dialect.is_disconnect(e, fairy.dbapi_connection, cursor)
    _close(cursor)
    if invalidated:
        conn.invalidate(e)
    raise sa.exc.DBAPIError.instance(
        sql, params, e, dialect.loaded_dbapi.Error, connection_invalidated=invalidated, dialect=dialect, ismulti=many,
    ) from e


def prebuilt(statement: Any) -> Prebuilt:
    """``statement``, executed through its compiled form (see the module's documentation)."""
    return Prebuilt(statement)


class _Form:
    """One compiled form of a statement: its SQL, how to bind a parameter dict, how to read a row."""

    __slots__ = ("sql", "binds", "positional", "results", "row", "dbapi_error", "_readers")

    @classmethod
    def build(cls, compiled: Any, dialect: Any, params: dict, expanding: tuple[str, ...]) -> "_Form | None":
        try:
            return cls._build(compiled, dialect, params, expanding)
        except AttributeError:  # a SQLAlchemy whose compiled statements read otherwise: its own path
            return None

    @classmethod
    def _build(cls, compiled: Any, dialect: Any, params: dict, expanding: tuple[str, ...]) -> "_Form | None":
        if compiled.literal_execute_params or compiled.escaped_bind_names or compiled.update_prefetch:
            return None
        defaults = {}
        for col in compiled.insert_prefetch:  # constants only; a callable default needs the execution context
            default = col.default
            if default is None or not default.is_scalar:
                return None
            defaults[col.key] = default.arg
        if compiled.post_compile_params:  # IN lists: rendered for the lengths of these parameters' lists
            state = compiled.construct_expanded_state(params)
            sql = state.statement
            order = state.positiontup if compiled.positional else list(state.parameters)
        else:
            sql = compiled.string
            order = compiled.positiontup if compiled.positional else [n for n in compiled.bind_names.values()]
        plain = {}
        listed = {}  # a rendered name of an IN list's element -> (its parameter, its index)
        for bp, name in compiled.bind_names.items():
            if not bp.expanding:
                plain[name] = bp
                continue
            values = params[bp.key] if bp.key in expanding else bp.value
            for i in range(len(values)):
                listed[f"{name}_{i + 1}"] = (bp, i)
        binds = []
        for name in order:
            index = None
            if name in plain:
                bp = plain[name]
            elif name in listed:
                bp, index = listed[name]
            elif name in defaults:
                bp = None
            else:
                return None
            if bp is None:
                source, value, processor = name, defaults[name], None
            else:
                if bp.callable is not None:
                    return None
                source = bp.key
                value = defaults[source] if source in defaults else (_REQUIRED if bp.required else bp.value)
                if index is not None and source not in expanding:  # a constant list
                    source, value, index = None, value[index], None
                processor = bp.type.dialect_impl(dialect).bind_processor(dialect)
            binds.append((name, source, index, value, processor))
        form = cls()
        form.sql = sql
        form.binds = binds
        form.positional = compiled.positional
        columns = compiled._result_columns
        keys = [c[0] for c in columns]
        if len(set(keys)) != len(keys) or any(not k.isidentifier() or iskeyword(k) or k.startswith("_") for k in keys):
            return None
        form.results = [c[3] for c in columns]
        form.row = _row_class(keys) if keys else None
        form.dbapi_error = dialect.loaded_dbapi.Error
        form._readers = None
        return form

    def _bind(self, params: dict) -> Any:
        values = []
        for _name, source, index, default, processor in self.binds:
            value = default if source is None else params.get(source, default)
            if value is _REQUIRED:
                raise sa.exc.ArgumentError(f"A value is required for bind parameter {source!r}")
            if index is not None:
                value = value[index]
            values.append(processor(value) if processor is not None else value)  # None too, as SQLAlchemy does (JSON null)
        if self.positional:
            return tuple(values)
        return {b[0]: v for b, v in zip(self.binds, values)}

    def execute(self, conn: Connection, distilled_params: list) -> "Rows":
        if not conn.in_transaction():
            conn.begin()  # what the first conn.execute would do (autobegin)
        fairy = conn.connection
        cursor = fairy.dbapi_connection.cursor()
        many = len(distilled_params) > 1
        try:
            if many:
                cursor.executemany(self.sql, [self._bind(p) for p in distilled_params])
            else:
                cursor.execute(self.sql, self._bind(distilled_params[0] if distilled_params else {}))
            rowcount = cursor.rowcount
            # a statement without result columns has nothing to fetch; psycopg builds ``description`` anew
            # (a Column object per column) at each read, so it is read only where it decides
            rows = None if self.row is None or (many and cursor.description is None) else cursor.fetchall()
        except self.dbapi_error as e:
            _raise(conn, e, fairy, cursor, self.sql, distilled_params, many)
        if rows is not None and self.row is not None:
            readers = self._readers
            if readers is None:
                readers = self._readers = [
                    t.dialect_impl(conn.dialect).result_processor(conn.dialect, d[1]) for t, d in zip(self.results, cursor.description)
                ]
            make = self.row._make
            if any(readers):
                rows = [make([r(v) if r is not None else v for r, v in zip(readers, raw)]) for raw in rows]
            else:
                rows = [make(raw) for raw in rows]
        _close(cursor)
        return Rows(rows, rowcount)


def _close(cursor: Any) -> None:
    try:
        cursor.close()
    except Exception:  # pragma: no cover - closing a cursor of a broken connection
        pass


def _row_class(keys: list[str]) -> type:
    base = namedtuple("Row", keys)  # type: ignore[misc]

    class Row(base):  # type: ignore[valid-type, misc]
        """A row as SQLAlchemy's ``Row`` reads: by attribute, by position, and ``_mapping``."""

        __slots__ = ()

        @property
        def _mapping(self) -> dict:
            return dict(zip(self._fields, self))

    return Row


class Rows:
    """The result of a prebuilt statement, fetched whole: the subset of ``sa.engine.Result``
    that the hot paths use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list | None, rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def _all(self) -> list:
        if self._rows is None:
            raise sa.exc.ResourceClosedError("This result object does not return rows.")
        return self._rows

    def __iter__(self) -> Iterator:
        return iter(self._all())

    def all(self) -> list:
        return list(self._all())

    fetchall = all

    def first(self) -> Any:
        rows = self._all()
        return rows[0] if rows else None

    fetchone = first

    def one_or_none(self) -> Any:
        rows = self._all()
        if len(rows) > 1:
            raise sa.exc.MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None

    def one(self) -> Any:
        row = self.one_or_none()
        if row is None:
            raise sa.exc.NoResultFound("No row was found when one was required")
        return row

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> "Rows":
        return Rows([r[0] for r in self._all()], self.rowcount)

    @property
    def returns_rows(self) -> bool:
        return self._rows is not None

    def close(self) -> None:
        pass
