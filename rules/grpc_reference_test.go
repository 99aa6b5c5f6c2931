package rules

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// The two decoders dockerd runs on a PruneRequest, as references for
// readPruneAll: protobuf-go (BuildKit v0.17.0 and later, so moby v28.5.2
// and Docker 29) and gogo-generated code (moby v20.10.24 and v26.1.5).

// pruneRequestDesc is BuildKit's PruneRequest (api/services/control/
// control.proto at v0.25.2) built at run time, so that protobuf-go decodes
// it without generated code. filter is declared bytes, not string: the two
// are the same on the wire, and this way a filter that is not UTF-8, which
// only fails the call on protobuf-go engines, still decodes.
var pruneRequestDesc = func() protoreflect.MessageDescriptor {
	field := func(name string, num int32, label descriptorpb.FieldDescriptorProto_Label, typ descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Label: label.Enum(), Type: typ.Enum(), JsonName: proto.String(name)}
	}
	opt, rep := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL, descriptorpb.FieldDescriptorProto_LABEL_REPEATED
	i64 := descriptorpb.FieldDescriptorProto_TYPE_INT64
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("prune-guard/rules/control_test.proto"),
		Package: proto.String("moby.buildkit.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("PruneRequest"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("filter", 1, rep, descriptorpb.FieldDescriptorProto_TYPE_BYTES),
				field("all", 2, opt, descriptorpb.FieldDescriptorProto_TYPE_BOOL),
				field("keepDuration", 3, opt, i64),
				field("reservedSpace", 4, opt, i64),
				field("maxUsedSpace", 5, opt, i64),
				field("minFreeSpace", 6, opt, i64),
			},
		}},
	}, new(protoregistry.Files))
	if err != nil {
		panic(err)
	}
	return fd.Messages().Get(0)
}()

// protobufPrune decodes msg as proto.Unmarshal does on a protobuf-go
// engine. unknownAnomaly reports what protobuf-go accepts but keeps aside
// as unknown and gogo either rejects or reads another way: a known field
// number with another wire type, or a group.
func protobufPrune(msg []byte) (all, unknownAnomaly bool, err error) {
	m := dynamicpb.NewMessage(pruneRequestDesc)
	if err := proto.Unmarshal(msg, m); err != nil {
		return false, false, err
	}
	for u := m.GetUnknown(); len(u) > 0; {
		num, typ, n := protowire.ConsumeField(u)
		if n < 0 {
			return false, false, fmt.Errorf("protobuf-go kept unknown bytes it cannot parse again: %v", protowire.ParseError(n))
		}
		if num <= 6 || typ == protowire.StartGroupType {
			unknownAnomaly = true
		}
		u = u[n:]
	}
	return m.Get(pruneRequestDesc.Fields().ByName("all")).Bool(), unknownAnomaly, nil
}

// gogoPrune is gogo's PruneRequest.Unmarshal as BuildKit eeb7b65 and
// v0.13.2 generate it (api/services/control/control.pb.go, eeb7b65 l.3111,
// v0.13.2 l.5335, and skipControl), reduced to the All field.
func gogoPrune(dAtA []byte) (all bool, err error) {
	l := len(dAtA)
	iNdEx := 0
	varint := func() (uint64, error) {
		var v uint64
		for shift := uint(0); ; shift += 7 {
			if shift >= 64 {
				return 0, errors.New("proto: integer overflow")
			}
			if iNdEx >= l {
				return 0, io.ErrUnexpectedEOF
			}
			b := dAtA[iNdEx]
			iNdEx++
			v |= uint64(b&0x7F) << shift
			if b < 0x80 {
				return v, nil
			}
		}
	}
	for iNdEx < l {
		preIndex := iNdEx
		wire, err := varint()
		if err != nil {
			return false, err
		}
		fieldNum := int32(wire >> 3)
		wireType := int(wire & 0x7)
		if wireType == 4 {
			return false, errors.New("proto: PruneRequest: wiretype end group for non-group")
		}
		if fieldNum <= 0 {
			return false, fmt.Errorf("proto: PruneRequest: illegal tag %d (wire type %d)", fieldNum, wire)
		}
		switch fieldNum {
		case 1:
			if wireType != 2 {
				return false, fmt.Errorf("proto: wrong wireType = %d for field Filter", wireType)
			}
			stringLen, err := varint()
			if err != nil {
				return false, err
			}
			intStringLen := int(stringLen)
			if intStringLen < 0 {
				return false, errors.New("proto: negative length found during unmarshaling")
			}
			postIndex := iNdEx + intStringLen
			if postIndex < 0 {
				return false, errors.New("proto: negative length found during unmarshaling")
			}
			if postIndex > l {
				return false, io.ErrUnexpectedEOF
			}
			iNdEx = postIndex
		case 2, 3, 4:
			if wireType != 0 {
				return false, fmt.Errorf("proto: wrong wireType = %d for field %d", wireType, fieldNum)
			}
			v, err := varint()
			if err != nil {
				return false, err
			}
			if fieldNum == 2 {
				// "var v int; v |= int(b&0x7F) << shift": the same
				// low 64 bits as the uint64 here.
				all = v != 0
			}
		default:
			iNdEx = preIndex
			skippy, err := gogoSkip(dAtA[iNdEx:])
			if err != nil {
				return false, err
			}
			if (skippy < 0) || (iNdEx+skippy) < 0 {
				return false, errors.New("proto: negative length found during unmarshaling")
			}
			if (iNdEx + skippy) > l {
				return false, io.ErrUnexpectedEOF
			}
			iNdEx += skippy
		}
	}
	if iNdEx > l {
		return false, io.ErrUnexpectedEOF
	}
	return all, nil
}

// gogoSkip is gogo's skipControl.
func gogoSkip(dAtA []byte) (n int, err error) {
	l := len(dAtA)
	iNdEx := 0
	depth := 0
	for iNdEx < l {
		var wire uint64
		for shift := uint(0); ; shift += 7 {
			if shift >= 64 {
				return 0, errors.New("proto: integer overflow")
			}
			if iNdEx >= l {
				return 0, io.ErrUnexpectedEOF
			}
			b := dAtA[iNdEx]
			iNdEx++
			wire |= (uint64(b) & 0x7F) << shift
			if b < 0x80 {
				break
			}
		}
		wireType := int(wire & 0x7)
		switch wireType {
		case 0:
			for shift := uint(0); ; shift += 7 {
				if shift >= 64 {
					return 0, errors.New("proto: integer overflow")
				}
				if iNdEx >= l {
					return 0, io.ErrUnexpectedEOF
				}
				iNdEx++
				if dAtA[iNdEx-1] < 0x80 {
					break
				}
			}
		case 1:
			iNdEx += 8
		case 2:
			var length int
			for shift := uint(0); ; shift += 7 {
				if shift >= 64 {
					return 0, errors.New("proto: integer overflow")
				}
				if iNdEx >= l {
					return 0, io.ErrUnexpectedEOF
				}
				b := dAtA[iNdEx]
				iNdEx++
				length |= (int(b) & 0x7F) << shift
				if b < 0x80 {
					break
				}
			}
			if length < 0 {
				return 0, errors.New("proto: negative length found during unmarshaling")
			}
			iNdEx += length
		case 3:
			depth++
		case 4:
			if depth == 0 {
				return 0, errors.New("proto: unexpected end of group")
			}
			depth--
		case 5:
			iNdEx += 4
		default:
			return 0, fmt.Errorf("proto: illegal wireType %d", wireType)
		}
		if iNdEx < 0 {
			return 0, errors.New("proto: negative length found during unmarshaling")
		}
		if depth == 0 {
			return iNdEx, nil
		}
	}
	return 0, io.ErrUnexpectedEOF
}

// pruneVerdict checks readPruneAll's reading of msg against both
// decoders: a message it accepts, both accept and read the same all from;
// one it refuses, one of them rejects, or they disagree on, or protobuf-go
// keeps a known field or a group aside as unknown. It returns "" when the
// reading holds.
func pruneVerdict(msg []byte, accepted, all bool) string {
	pAll, anomaly, pErr := protobufPrune(msg)
	gAll, gErr := gogoPrune(msg)
	switch {
	case accepted && pErr != nil:
		return fmt.Sprintf("accepted, but protobuf-go rejects it: %v", pErr)
	case accepted && gErr != nil:
		return fmt.Sprintf("accepted, but gogo rejects it: %v", gErr)
	case accepted && (pAll != all || gAll != all):
		return fmt.Sprintf("read all=%v, protobuf-go reads %v, gogo %v", all, pAll, gAll)
	case !accepted && pErr == nil && gErr == nil && pAll == gAll && !anomaly:
		return fmt.Sprintf("refused, but both decoders accept it alike (all=%v)", pAll)
	}
	return ""
}
