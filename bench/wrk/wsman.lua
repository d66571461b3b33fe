-- wrk: a WS-Management-sized request, POST /wsman with a 4 KiB SOAP body
-- (the agent answers an 8 KiB envelope). The VM is named in X-VM-Id; the
-- direct contender ignores the header.
local head = [[<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
  xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
  xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration">
<s:Header>
<a:To>http://vm1:5986/wsman</a:To>
<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service</w:ResourceURI>
<a:Action>http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull</a:Action>
<a:MessageID>uuid:00000000-0000-0000-0000-000000000002</a:MessageID>
<w:MaxEnvelopeSize>512000</w:MaxEnvelopeSize>
<w:OperationTimeout>PT60S</w:OperationTimeout>
</s:Header>
<s:Body>
<n:Pull><n:EnumerationContext>uuid:00000000-0000-0000-0000-000000000003</n:EnumerationContext>
<n:MaxElements>32</n:MaxElements></n:Pull>
]]
local tail = "</s:Body>\n</s:Envelope>\n"
local size = 4096
local pad = size - #head - #tail
local body = head .. "<!--" .. string.rep(" ", pad - 8) .. "-->\n" .. tail
assert(#body == size)

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/soap+xml;charset=UTF-8"
wrk.headers["X-VM-Id"] = "vm1"
