"""The CSI (spec v1, package ``csi.v1``) and kubelet plugin-registration (``pluginregistration``,
k8s.io/kubelet pkg/apis/pluginregistration/v1) messages calicolab uses, declared with the
upstream field numbers; only the fields calicolab reads or writes are listed (others are
skipped on decode, as protobuf does). See :mod:`agent.protowire`."""

from __future__ import annotations

from agent.protowire import EMPTY, Field, Message

# --- CSI Identity ----------------------------------------------------------------------------
GET_PLUGIN_INFO_REQUEST = EMPTY
GET_PLUGIN_INFO_RESPONSE = Message("csi.v1.GetPluginInfoResponse", [
    Field("name", 1, "string"), Field("vendor_version", 2, "string"), Field("manifest", 3, "map")])
_SERVICE_CAP = Message("csi.v1.PluginCapability.Service", [Field("type", 1, "enum")])
PLUGIN_CAPABILITY = Message("csi.v1.PluginCapability", [Field("service", 1, "message", message=_SERVICE_CAP)])
GET_PLUGIN_CAPABILITIES_RESPONSE = Message("csi.v1.GetPluginCapabilitiesResponse", [
    Field("capabilities", 1, "message", repeated=True, message=PLUGIN_CAPABILITY)])
BOOL_VALUE = Message("google.protobuf.BoolValue", [Field("value", 1, "bool")])
PROBE_RESPONSE = Message("csi.v1.ProbeResponse", [Field("ready", 1, "message", message=BOOL_VALUE)])

# --- CSI Node --------------------------------------------------------------------------------
_MOUNT_VOLUME = Message("csi.v1.VolumeCapability.MountVolume", [
    Field("fs_type", 1, "string"), Field("mount_flags", 2, "string", repeated=True),
    Field("volume_mount_group", 3, "string")])
_ACCESS_MODE = Message("csi.v1.VolumeCapability.AccessMode", [Field("mode", 1, "enum")])
VOLUME_CAPABILITY = Message("csi.v1.VolumeCapability", [
    Field("block", 1, "message", message=EMPTY), Field("mount", 2, "message", message=_MOUNT_VOLUME),
    Field("access_mode", 3, "message", message=_ACCESS_MODE)])
#: VolumeCapability.AccessMode.Mode SINGLE_NODE_WRITER (what the kubelet sends for an
#: ephemeral volume that is not read-only)
SINGLE_NODE_WRITER = 1
NODE_PUBLISH_VOLUME_REQUEST = Message("csi.v1.NodePublishVolumeRequest", [
    Field("volume_id", 1, "string"), Field("publish_context", 2, "map"),
    Field("staging_target_path", 3, "string"), Field("target_path", 4, "string"),
    Field("volume_capability", 5, "message", message=VOLUME_CAPABILITY), Field("readonly", 6, "bool"),
    Field("secrets", 7, "map"), Field("volume_context", 8, "map")])
NODE_PUBLISH_VOLUME_RESPONSE = EMPTY
NODE_UNPUBLISH_VOLUME_REQUEST = Message("csi.v1.NodeUnpublishVolumeRequest", [
    Field("volume_id", 1, "string"), Field("target_path", 2, "string")])
NODE_UNPUBLISH_VOLUME_RESPONSE = EMPTY
TOPOLOGY = Message("csi.v1.Topology", [Field("segments", 1, "map")])
NODE_GET_INFO_RESPONSE = Message("csi.v1.NodeGetInfoResponse", [
    Field("node_id", 1, "string"), Field("max_volumes_per_node", 2, "int64"),
    Field("accessible_topology", 3, "message", message=TOPOLOGY)])
_RPC_CAP = Message("csi.v1.NodeServiceCapability.RPC", [Field("type", 1, "enum")])
NODE_SERVICE_CAPABILITY = Message("csi.v1.NodeServiceCapability", [Field("rpc", 1, "message", message=_RPC_CAP)])
NODE_GET_CAPABILITIES_RESPONSE = Message("csi.v1.NodeGetCapabilitiesResponse", [
    Field("capabilities", 1, "message", repeated=True, message=NODE_SERVICE_CAPABILITY)])

IDENTITY = "csi.v1.Identity"
NODE = "csi.v1.Node"

# --- kubelet plugin registration ---------------------------------------------------------------
PLUGIN_INFO = Message("pluginregistration.PluginInfo", [
    Field("type", 1, "string"), Field("name", 2, "string"), Field("endpoint", 3, "string"),
    Field("supported_versions", 4, "string", repeated=True)])
REGISTRATION_STATUS = Message("pluginregistration.RegistrationStatus", [
    Field("plugin_registered", 1, "bool"), Field("error", 2, "string")])
REGISTRATION = "pluginregistration.Registration"
#: PluginInfo.type of a CSI driver (pluginregistration.CSIPlugin)
CSI_PLUGIN = "CSIPlugin"
