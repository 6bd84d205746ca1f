"""Alembic environment: runs on the connection that `alambic.store.database.upgrade` hands over."""

from alembic import context
from sqlalchemy import create_engine

from alambic.store.schema import Base

config = context.config
connection = config.attributes.get("connection")


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # `alembic -x url=...` from the command line, e.g. to autogenerate a revision
    with create_engine(context.get_x_argument(as_dictionary=True)["url"]).connect() as direct:
        run(direct)
        direct.commit()
