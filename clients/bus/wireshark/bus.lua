-- Wireshark / tshark dissector for `bus monitor --pcap` captures: link type LINKTYPE_USER0
-- (147), each packet one serialized bus.v1.Envelope (proto/bus/v1/envelope.proto) as busd
-- routed it, payload included (cut at 256 KiB; the payload's length field keeps its size).
--
--   tshark -X lua_script:clients/bus/wireshark/bus.lua -r bus.pcap
--   tshark -X lua_script:bus.lua -r bus.pcap -T fields -e bus.kind -e bus.subject -e bus.type
--   wireshark: copy to ~/.local/lib/wireshark/plugins/ (or -X lua_script:...)
--
-- Filters: bus.kind == 3 (requests), bus.subject contains "orders", bus.header.key == "trace".
-- Decodes the Envelope only; the payload is shown as bytes (as text when it is printable).

local bus = Proto("bus", "bus message (bus.v1.Envelope)")

local kinds = {
    [0] = "unspecified", [1] = "data", [2] = "publish", [3] = "request", [4] = "reply",
    [5] = "direct", [6] = "error", [7] = "control", [8] = "event",
}

local f = {
    kind = ProtoField.uint32("bus.kind", "Kind", base.DEC, kinds),
    subject = ProtoField.string("bus.subject", "Subject"),
    type_url = ProtoField.string("bus.type_url", "Type URL"),
    type = ProtoField.string("bus.type", "Type"),
    payload = ProtoField.bytes("bus.payload", "Payload"),
    payload_length = ProtoField.uint32("bus.payload_length", "Payload length"),
    payload_text = ProtoField.string("bus.payload_text", "Payload (text)"),
    id = ProtoField.uint64("bus.id", "Id"),
    correlation_id = ProtoField.uint64("bus.correlation_id", "Correlation id"),
    reply_to = ProtoField.string("bus.reply_to", "Reply to"),
    source = ProtoField.string("bus.source", "Source"),
    deadline = ProtoField.int64("bus.deadline_unix_ns", "Deadline (ns since the epoch)"),
    header = ProtoField.string("bus.header", "Header"),
    header_key = ProtoField.string("bus.header.key", "Key"),
    header_value = ProtoField.string("bus.header.value", "Value"),
    fd_count = ProtoField.uint32("bus.fd_count", "File descriptors"),
    subscription_id = ProtoField.uint64("bus.subscription_id", "Subscription id"),
    monitored_kind = ProtoField.uint32("bus.monitored_kind", "Monitored kind", base.DEC, kinds),
}
bus.fields = {
    f.kind, f.subject, f.type_url, f.type, f.payload, f.payload_length, f.payload_text, f.id,
    f.correlation_id, f.reply_to, f.source, f.deadline, f.header, f.header_key, f.header_value,
    f.fd_count, f.subscription_id, f.monitored_kind,
}

local malformed = ProtoExpert.new("bus.malformed", "Malformed Envelope", expert.group.MALFORMED,
                                  expert.severity.ERROR)
local cut = ProtoExpert.new("bus.cut", "Field cut short by the capture's snap length",
                            expert.group.UNDECODED, expert.severity.NOTE)
bus.experts = { malformed, cut }

-- A base-128 varint at `at`: its value (UInt64) and the offset after it; nil if malformed.
local function varint(tvb, at, limit)
    local value = UInt64(0)
    local shift = 0
    while at < limit and shift < 64 do
        local b = tvb(at, 1):uint()
        value = value + UInt64(b % 128):lshift(shift)
        at = at + 1
        if b < 128 then
            return value, at
        end
        shift = shift + 7
    end
    return nil
end

-- Parses protobuf fields in tvb[start, limit): calls visit(number, wire_type, value, range)
-- with a UInt64 for varints and the byte range for length-delimited fields (cut to what the
-- capture holds; `length` is the full one). False on malformed input.
local function fields(tvb, start, limit, visit)
    local at = start
    while at < limit do
        local key, after = varint(tvb, at, limit)
        if not key then return false end
        local number = key:rshift(3):tonumber()
        local wire = (key % 8):tonumber()
        if wire == 0 then
            local v, next_at = varint(tvb, after, limit)
            if not v then return false end
            visit(number, wire, v, tvb(at, next_at - at))
            at = next_at
        elseif wire == 2 then
            local length, body = varint(tvb, after, limit)
            if not length then return false end
            length = length:tonumber()
            local kept = math.min(length, limit - body)
            visit(number, wire, tvb(body, kept), tvb(at, body + kept - at), length)
            at = body + length
        elseif wire == 1 then
            at = after + 8
        elseif wire == 5 then
            at = after + 4
        else
            return false
        end
    end
    return at == limit
end

local function text(range)
    if range:len() == 0 then return "" end
    return range:string()
end

local function printable(s)
    return #s > 0 and not s:find("[^\t\n\r\32-\126]")
end

function bus.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "BUS"
    local root = tree:add(bus, tvb())
    local e = { kind = 0, subject = "", type = "", payload_length = 0 }
    local ok = fields(tvb, 0, tvb:len(), function(number, wire, v, range, length)
        if wire == 0 then
            if number == 1 then
                e.kind = v:tonumber()
                root:add(f.kind, range, e.kind)
            elseif number == 5 then
                root:add(f.id, range, v)
            elseif number == 6 then
                root:add(f.correlation_id, range, v)
            elseif number == 9 then
                root:add(f.deadline, range, Int64(v:lower(), v:higher()))
            elseif number == 11 then
                root:add(f.fd_count, range, v:tonumber())
            elseif number == 12 then
                root:add(f.subscription_id, range, v)
            elseif number == 13 then
                root:add(f.monitored_kind, range, v:tonumber())
            end
            return
        end
        if wire ~= 2 then return end
        local item
        if number == 2 then
            e.subject = text(v)
            item = root:add(f.subject, v, e.subject)
        elseif number == 3 then
            local url = text(v)
            root:add(f.type_url, v, url)
            e.type = url:gsub("^.*/", "")
            item = root:add(f.type, v, e.type)
            item:set_generated()
        elseif number == 4 then
            e.payload_length = length
            root:add(f.payload_length, range, length)
            item = root:add(f.payload, v)
            local s = text(v)
            if printable(s) then
                root:add(f.payload_text, v, s)
            end
        elseif number == 7 then
            item = root:add(f.reply_to, v, text(v))
        elseif number == 8 then
            e.source = text(v)
            item = root:add(f.source, v, e.source)
        elseif number == 10 then
            local key, value = "", ""
            fields(v:tvb(), 0, v:len(), function(n, w, hv)
                if w == 2 and n == 1 then key = text(hv) end
                if w == 2 and n == 2 then value = text(hv) end
            end)
            item = root:add(f.header, v, key .. "=" .. value)
            item:add(f.header_key, v, key)
            item:add(f.header_value, v, value)
        end
        if item and length and v:len() < length then
            item:add_proto_expert_info(cut)
        end
    end)
    if not ok then
        root:add_proto_expert_info(malformed)
    end
    local kind = kinds[e.kind] or ("kind " .. e.kind)
    root:append_text(", " .. kind .. " " .. e.subject)
    local info = kind .. " " .. e.subject
    if e.type ~= "" then info = info .. " " .. e.type end
    pinfo.cols.info = info .. " (" .. e.payload_length .. " bytes)"
    pinfo.cols.src = e.source or ""
    return tvb:len()
end

local encaps = wtap_encaps or wtap
DissectorTable.get("wtap_encap"):add(encaps.USER0, bus)
