"""Parse an XML document from outside (a domain XML on the hook's stdin) with no DTD.

A byte search for `<!DOCTYPE` misses the same markup in UTF-16 or UTF-32, which the
parser decodes all the same, and an internal entity then expands into the document
(and from there into a record). Here expat itself refuses a document type declaration
and any entity declaration, whatever the encoding, before a single entity is defined;
references to undefined entities are errors. The tree is ElementTree's, names in its
`{uri}local` form, so callers use the ordinary ElementTree API on the result.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

# libvirt never sends a document type; anything declaring one is not a domain XML.
DTD_REFUSED = "with a DOCTYPE or entity declarations is refused (libvirt never sends one)"


class UntrustedXmlError(Exception):
    """The document is refused or not well-formed; the message is one line, to follow
    the document's name ("domain XML is not well-formed: ...")."""


def parse_untrusted(data: bytes) -> ET.Element:
    """The root element of `data`, or UntrustedXmlError."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_args: object) -> None:
        raise UntrustedXmlError(DTD_REFUSED)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = lambda tag, attrs: builder.start(
        _name(tag), {_name(k): v for k, v in attrs.items()})
    parser.EndElementHandler = lambda tag: builder.end(_name(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise UntrustedXmlError(f"is not well-formed: {expat.errors.messages[exc.code]} "
                                f"(line {exc.lineno}, column {exc.offset})") from None
    except ValueError as exc:  # pyexpat's word for an encoding it cannot read (UTF-32)
        raise UntrustedXmlError(f"is in an encoding that cannot be read ({exc})") from None
    return builder.close()


def _name(expat_name: str) -> str:
    """expat's `uri}local` as ElementTree's `{uri}local`."""
    return "{" + expat_name if "}" in expat_name else expat_name


__all__ = ["DTD_REFUSED", "UntrustedXmlError", "parse_untrusted"]
