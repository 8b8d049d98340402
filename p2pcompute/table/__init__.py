"""The replicated metadata table: Raft replicas (`raft.TableReplica`), the state machine they replicate
(`state.TableState`), and the client core with its read cache (`client.TableClient`). All pure; see the
theory of operation at the top of each module."""

from p2pcompute.table.client import ClientConfig, TableClient
from p2pcompute.table.raft import RaftConfig, TableReplica
from p2pcompute.table.state import TableState
from p2pcompute.table.storage import PersistentState

__all__ = ["ClientConfig", "PersistentState", "RaftConfig", "TableClient", "TableReplica", "TableState"]
