"""A small RBAC authorizer, as kube-apiserver runs it (``--authorization-mode=Node,RBAC``).

Who is asking comes from the bearer token (:meth:`KubeApiServer.service_account_kubeconfig`
registers a ServiceAccount's token: user ``system:serviceaccount:NS:NAME``, groups
``system:serviceaccounts``, ``system:serviceaccounts:NS``, ``system:authenticated``). The
kubeconfig's own user is in ``system:masters``, which bypasses authorization as on a real
cluster, so every other test is unaffected.

What is evaluated (plugin/pkg/auth/authorizer/rbac, k8s.io/component-helpers/auth/rbac):

* ClusterRoleBindings (to ClusterRoles) everywhere, RoleBindings (to a Role, or a ClusterRole
  scoped to the binding's namespace) in the request's namespace;
* subjects: ``User`` (name), ``Group`` (name), ``ServiceAccount`` (namespace + name);
* a rule matches when its ``apiGroups``, ``resources`` (``plural`` or ``plural/subresource``, ``*``,
  ``*/subresource``) and ``verbs`` contain the request's, or ``*``, and its ``resourceNames`` are
  empty or contain the request's name (so a rule with resourceNames never allows create, list or
  deletecollection, which carry no name);
* non-resource paths (discovery, /version, /openapi, /healthz) are allowed to every
  authenticated user, as the default ``system:discovery`` and ``system:public-info-viewer``
  ClusterRoles do.

A denial is a 403 worded by ``responsewriters.Forbidden``: ``secrets "x" is forbidden: User
"system:serviceaccount:ns:sa" cannot update resource "secrets" in API group "" in the
namespace "ns"``, followed by ``: RBAC: role.rbac.authorization.k8s.io "r" not found`` when a
binding that applies names a role that does not exist (the RBAC authorizer's reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import go_quote

MASTERS = "system:masters"
RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def privileged(self) -> bool:
        return MASTERS in self.groups


def service_account_user(namespace: str, name: str) -> User:
    return User(f"system:serviceaccount:{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


def _applies(subject: dict, user: User, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def _has(values, wanted: str) -> bool:
    return "*" in (values or ()) or wanted in (values or ())


def rule_allows(rule: dict, verb: str, group: str, resource: str, subresource: str, name: str) -> bool:
    """``RuleAllows`` of component-helpers/auth/rbac."""
    if not _has(rule.get("verbs"), verb) or not _has(rule.get("apiGroups"), group):
        return False
    combined = f"{resource}/{subresource}" if subresource else resource
    resources = rule.get("resources") or ()
    if not ("*" in resources or combined in resources or (subresource and f"*/{subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or ()
    return not names or name in names


class Authorizer:
    """``authorize(user, verb, group, resource, subresource, namespace, name)`` -> (allowed, reason).
    ``lookup(resource_plural, namespace, name)`` and ``objects(resource_plural)`` read the store."""

    def __init__(self, lookup, objects):
        self._lookup = lookup
        self._objects = objects

    def _role_rules(self, ref: dict, binding_ns: str, errors: list[str]) -> list[dict]:
        kind, name = ref.get("kind"), ref.get("name") or ""
        if kind == "Role":
            role = self._lookup("roles", binding_ns, name)
            missing = f'role.{RBAC_GROUP} {go_quote(name)} not found'
        else:
            role = self._lookup("clusterroles", "", name)
            missing = f'clusterrole.{RBAC_GROUP} {go_quote(name)} not found'
        if role is None:
            errors.append(missing)
            return []
        return role.get("rules") or []

    def authorize(self, user: User, verb: str, group: str, resource: str, subresource: str, namespace: str,
                  name: str) -> tuple[bool, str]:
        if user.privileged:
            return True, ""
        errors: list[str] = []
        bindings = [(b, "") for b in self._objects("clusterrolebindings")]
        if namespace:
            bindings += [(b, namespace) for b in self._objects("rolebindings")
                         if (b.get("metadata") or {}).get("namespace") == namespace]
        for binding, ns in bindings:
            if not any(_applies(s, user, ns) for s in binding.get("subjects") or []):
                continue
            for rule in self._role_rules(binding.get("roleRef") or {}, ns, errors):
                if rule_allows(rule, verb, group, resource, subresource, name):
                    return True, ""
        if not errors:
            return False, ""
        agg = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return False, f"RBAC: {agg}"


def forbidden_message(user: str, verb: str, group: str, resource: str, subresource: str, namespace: str) -> str:
    """``responsewriters.forbiddenMessage`` for a resource request."""
    res = f"{resource}/{subresource}" if subresource else resource
    if namespace:
        return (f"User {go_quote(user)} cannot {verb} resource {go_quote(res)} in API group {go_quote(group)} "
                f"in the namespace {go_quote(namespace)}")
    return f"User {go_quote(user)} cannot {verb} resource {go_quote(res)} in API group {go_quote(group)} at the cluster scope"
