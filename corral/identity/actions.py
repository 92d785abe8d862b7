"""Every action a policy can name, and the kinds of resource it can name.

A policy's action patterns must match at least one action listed here, and its
resource patterns must start with a known kind (or be `*`), so a typo such as
`comand:Send` is refused when the role is saved instead of silently granting nothing.
Actions of features still to come (sessions, parameters, file transfer) are listed
already so policies can be written for them ahead of time.
"""

from __future__ import annotations

ACTIONS: frozenset[str] = frozenset(
    {
        # identity and access
        "identity:WhoAmI",
        "identity:DescribeApi",
        "user:Create",
        "user:List",
        "user:Read",
        "user:Update",
        "user:Delete",
        "token:Create",
        "token:List",
        "token:Revoke",
        "role:Create",
        "role:List",
        "role:Read",
        "role:Update",
        "role:Delete",
        "access:Request",
        "access:List",
        "access:Read",
        "access:Approve",
        "access:AutoApprove",
        "access:Revoke",
        "audit:Read",
        "audit:Verify",
        "audit:Checkpoint",
        # fleet
        "activation:Create",
        "activation:List",
        "activation:Delete",
        "node:List",
        "node:Read",
        "node:Tag",
        "node:Deregister",
        "document:Create",
        "document:Update",
        "document:List",
        "document:Read",
        "document:Delete",
        "command:Send",
        "command:List",
        "command:Read",
        "command:Cancel",
        # later features
        "parameter:Put",
        "parameter:Get",
        "parameter:GetDecrypted",
        "parameter:List",
        "parameter:Delete",
        "parameter:Label",
        "parameter:Tag",
        "key:Create",
        "key:List",
        "key:Rotate",
        "session:Start",
        "session:List",
        "session:Read",
        "session:Terminate",
        "session:Observe",
        "file:Upload",
        "file:Download",
        # The Systems Manager wire API's route (POST /): any valid credential may call
        # it; every operation is then checked by the domain service as its own action
        # (parameter:Get, ...), which is also what the call's audit record names.
        "ssm:Call",
    }
)

RESOURCE_KINDS: frozenset[str] = frozenset(
    {
        "access",
        "activation",
        "audit",
        "command",
        "document",
        "file",
        "key",
        "node",
        "osuser",
        "parameter",
        "port",
        "role",
        "session",
        "token",
        "user",
    }
)
